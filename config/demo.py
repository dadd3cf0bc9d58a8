# The built-in demo set (nothing to download), as the README's first table trains it:
#   python train_MALN.py config/demo.py        (the same as --preset=demo)
# About 1.5 minutes on 2 cores. Chosen on validation weighted-F1 (docs/settings.md, docs/adversarial.md).
dataset = "demo"
epochs = 15
batch_size = 16
learning_rate = 2e-3
sclm_mode = "utterance"   # no stalled start: every utterance's own row reaches AMDM
