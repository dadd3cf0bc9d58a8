# The authors' released settings (github rmjrmj/MALN, commit 7ff1318), for any dataset:
#   python train_MALN.py config/released.py --dataset=IEMOCAP     (the same as --preset=released)
# With these the model computes what the release computes (tests/test_release.py).
standardize = False
sclm_mode = "release"
context_dropout = 0.5
dropout = 0.66
epochs = 60
batch_size = 32
learning_rate = 4e-4
lr_schedule = "constant"
weight_decay = 3e-5
reseed_every_epoch = True
cudnn_deterministic = True
reversal_schedule = "constant"
sclm_positions = "release"
adversarial_objective = "reversal"
common_last_layer = "shared"
context_encoder = "gru"
sclm_fusion = "concat"
utterance_skip = False
party_chain = False
