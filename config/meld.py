# MELD, as the README's headline trains it:
#   python train_MALN.py config/meld.py         (the same as --preset=MELD)
# Chosen on validation weighted-F1 of the fine-tuned text features (docs/settings.md): the party GRU without SCLM,
# 58.76 ± 0.44 against the plain defaults' 58.06 ± 0.45 (5 seeds each, 2.5 standard errors of the difference).
# Then a moving average of the weights (0.99) on it: 59.12 ± 0.39 against 58.76 (1.4 standard errors).
# On frozen vectors class_weights = True, average_decay = 0.99 had won.
dataset = "MELD"
context_encoder = "party_gru"   # beside the dialogue GRU, a GRU along each party's own turns (docs/results.md, context)
sclm_mode = "off"               # no SCLM
average_decay = 0.99            # validate and save a moving average of the weights (the preset fits its training dialogues fast)
