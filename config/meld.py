# MELD, as the README's headline trains it:
#   python train_MALN.py config/meld.py         (the same as --preset=MELD)
# On the fine-tuned text features the plain defaults at the top of train_MALN.py won on validation
# (docs/settings.md); on frozen vectors class_weights = True, average_decay = 0.99 had.
dataset = "MELD"
