# The built-in demo set (nothing to download), as the README's first table trains it:
#   python train_MALN.py config/demo.py        (the same as --preset=demo)
# About 30 s on 2 cores (32 s measured, the README's command). Chosen on validation weighted-F1 (docs/settings.md; the candidates: docs/results.md).
dataset = "demo"
epochs = 15
batch_size = 16
learning_rate = 2e-3
context_encoder = "party_gru"   # beside the dialogue GRU, a GRU along each party's own turns (docs/results.md, context)
sclm_mode = "off"         # with the party GRU, SCLM adds nothing on validation (80.97 without it, 77.70 with it)
party_chain = True        # learned emotion transitions along each party's turns (valid 83.02 with it, 80.97 without)
context_hidden = 32       # with the chain, a wider context GRU than the features (16-24): valid 84.03, 83.02 without
