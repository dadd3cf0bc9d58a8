"""
Train and evaluate MALN on IEMOCAP, MELD, any feature file of a known layout, or the built-in
demo set. Every hyperparameter below can be overridden on the command line:

    python train_MALN.py --dataset=demo
    python train_MALN.py --features=Features/iemocap_features_roberta.pkl --av_features=Features/IEMOCAP_features_raw.pkl
    python train_MALN.py --dataset=IEMOCAP --modalities=t --seeds=1,2,3
    python train_MALN.py --predict=saved_models/RUN/best.pt --features=Features/mydata.pkl
    python train_MALN.py --resume=saved_models/<run>     # continue an interrupted run
    python train_MALN.py --from_release=release.pkl --dataset=IEMOCAP --run_name=release   # the authors' weights

The epoch is selected on validation weighted-F1 and test is reported at that epoch; the
release's optimistic figure (best test epoch) is printed too, labelled as such
(--select_on=test runs the release's protocol itself: no validation, the best test epoch).
"""

import copy
import itertools
import json
import math
import os
import sys
import time
import warnings
from dataclasses import fields, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import classification_report, confusion_matrix
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from dataloader import CLASS_NAMES, DataError, check_training_splits, collate, load_dataset, to_device
from MALN_model_fix import MALN, MALNConfig
from utils import (LAST_CHECKPOINT_FIELDS, OutputError, atomic_write, check_adam_state, check_checkpoint, check_finite,
                   check_output_path, check_regular_file, check_state_shapes, check_writable_place, load_checkpoint,
                   load_model_state, remove_stale_temporaries, save_checkpoint, scores, set_seed, write_json)

# ----------------------------------------------------------------------------- hyperparameters
# data
dataset = "demo"            # 'IEMOCAP', 'MELD' or 'demo' (built in, nothing to download): label set and default files
features = ""               # feature file of any known layout; empty = the dataset's default under Features/
av_features = ""            # DialogueRNN / MMGCN file whose audio and visual join a COSMIC text file by dialogue id
modalities = ""             # any non-empty subset of 'tav'; empty = every modality the files provide
valid_fraction = 0.1        # share of training dialogues held out when the file has no validation ids
select_on = "valid"         # 'valid': the epoch is chosen on validation; 'test': the release's protocol (its valid=0.0):
                            # validation folded into train, the epoch chosen on test, every test figure optimistic
split_seed = 100            # seed of that held-out share (the same for every training seed)
demo_seed = 0               # seed of the generated demo data set
demo_common = 0.0           # > 0: the demo variant in which every modality also shows the whole emotion at this strength
                            # (a common part; 0 = the default demo, whose modalities share none)
trust_pickle = False        # load feature pickles without the restricted unpickler (only for files you trust)
# model: input
standardize = True          # standardise every feature dimension with training-set statistics (released: False)
input_dropout = 0.0         # dropout on the features before SCLM and the context encoders (released: none)
# model: SCLM
sclm_mode = "speaker"       # 'speaker' (per-party summary, the paper), 'utterance' (each utterance attends over its own
                            # party's utterances), 'release' (two whole-dialogue Transformers, released), 'off'
sclm_layers = 1             # Transformer layers of SCLM
sclm_heads = 1              # attention heads of SCLM
sclm_feedforward = 128      # feed-forward size of SCLM
sclm_dropout = 0.1          # dropout inside SCLM
sclm_positions = "release"  # SCLM's position table drawn from 'release': N(0, 1) (released), or 'small': N(0, 0.02^2)
speaker_size = 100          # projected speaker-characteristic vector
max_positions = 0           # rows of SCLM's position table (longest dialogue + 1); 0 = max(128, the longest training
                            # dialogue + 1): never sized from valid or test. A longer valid or test dialogue is refused
# model: context encoders
gru_layers = 2              # bidirectional GRU layers
context_hidden = 0          # GRU hidden size; 0 = the modality's feature size (released)
context_dropout = 0.5       # dropout between the GRU layers and on the context encoder's output (released: 0.5)
# model: AMDM
hidden_size = 100           # specific and common vector size
specific_dropout = 0.1      # dropout of the specific encoders
common_dropout = 0.3        # dropout of the common encoders
common_last_layer = "shared"  # the common encoders' last layer: 'shared' by every modality (released) or 'separate'
discriminator_hidden = 50   # hidden size of the modality discriminator
discriminator_dropout = 0.1 # dropout of the modality discriminator
gradient_reversal = 1.0     # lambda of the gradient reversal layer
adversarial_objective = "reversal"  # common encoders against the discriminator: 'reversal' (released: maximise its loss
                            # through the reversed gradient) or 'confusion' (minimise lambda x the cross-entropy of its
                            # prediction against uniform; the discriminator learns from the vectors as they are)
reversal_schedule = "constant"  # 'constant' (released) or 'dann': lambda times 2 / (1 + exp(-10 p)) - 1 at training
                            # progress p = (epoch - 1) / epochs, the warm-up of domain-adversarial training (Ganin et al.)
adversarial = True          # modality-discriminator losses
orthogonality = True        # orthogonality (difference) losses
cross_attention = True      # cross-modal attention (False: plain concatenation)
cross_input = "common"      # vectors fed to cross-modal attention: 'common' (release) or 'specific' (paper's wording)
cross_heads = 4             # heads of the cross-modal attention
dropout = 0.3               # dropout of the classifiers and the cross-modal attention (released: 0.66)
# loss
unimodal_weight = 0.1       # weight of the unimodal auxiliary classification losses
adversarial_weight = 0.01   # weight of the adversarial losses
orthogonality_weight = 5e-6 # weight of the orthogonality losses
class_weights = False       # weight the classification losses by inverse class frequency in train
# training (the released schedule gives IEMOCAP 4 updates an epoch, too few to converge: see --preset=released)
epochs = 30                 # training epochs (released: 60)
batch_size = 8              # dialogues per batch (released: 32)
bucket_batches = False      # training batches of similar-length dialogues (shuffled, sorted within pools of 4 batches)
learning_rate = 5e-4        # Adam learning rate (released: 4e-4, constant)
lr_schedule = "cosine"      # 'cosine' (decays to zero over the epochs) or 'constant' (released)
weight_decay = 3e-5         # Adam weight decay
average_decay = 0.0         # > 0: validate, select and save an exponential moving average of the weights, updated
                            # every step with this decay (e.g. 0.99); 0 = the trained weights themselves (released)
reseed_every_epoch = False  # reset every RNG to `seed` before each epoch, as the release does: the same batch order
                            # and dropout masks every epoch (released: True)
seed = 100                  # training seed
seeds = ""                  # several seeds, e.g. '1,2,3': one run each, then mean and std
device = "auto"             # 'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...
amp = False                 # bfloat16 autocast on cuda
cudnn_deterministic = False # cuda: cuDNN's deterministic algorithms (torch.backends.cudnn.deterministic; released: True)
# output
out_dir = "saved_models"    # runs are written to out_dir/run_name
run_name = ""               # empty = <dataset>_<modalities>_<date-time>, with -2, -3, ... when taken; a taken name is refused
export_features = True      # write fused, common and specific vectors of the selected epoch as .npz
# prediction instead of training (the data options above choose the dialogues)
predict = ""                # checkpoint to predict with: writes the class of every utterance as a CSV, no training
predictions = ""            # path of that CSV; empty = predictions.csv beside the checkpoint
predict_split = ""          # 'train', 'valid' or 'test' of the data; empty = every dialogue
# the authors' trained model as a checkpoint of this repository, instead of training
from_release = ""           # a torch.save file of the release's MALN state dict: written as out_dir/run_name/best.pt
class_names = ""            # its class names in order, comma-separated; empty = the names of --dataset
# machine
threads = 0                 # torch's cpu threads; 0 = torch's default (every core). Runs side by side: cores / runs each
# named groups of settings, applied under the command line: --preset=released gives the authors' values
preset = ""                 # '' = the dataset's own (PRESETS[dataset]: IEMOCAP, MELD, demo); 'none' = the values above;
                            # 'released' = the authors' settings
PRESETS = {
    "released": {"standardize": False, "sclm_mode": "release", "context_dropout": 0.5, "dropout": 0.66, "epochs": 60,
                 "batch_size": 32, "learning_rate": 4e-4, "lr_schedule": "constant", "weight_decay": 3e-5,
                 "reseed_every_epoch": True, "cudnn_deterministic": True, "reversal_schedule": "constant",
                 "sclm_positions": "release", "adversarial_objective": "reversal", "common_last_layer": "shared"},
    "demo": {"epochs": 15, "batch_size": 16, "learning_rate": 2e-3,  # the small synthetic set: about 1.5 minutes on 2 cores
             "sclm_mode": "utterance"},  # no stalled start: every utterance's own row reaches AMDM (docs/adversarial.md)
    # the dataset presets, applied with --dataset=IEMOCAP / MELD; chosen on validation weighted-F1 (README, Results).
    # A moving average over about an epoch and a half (IEMOCAP, 14 steps an epoch) or one epoch (MELD, 117 steps)
    "IEMOCAP": {"class_weights": True, "input_dropout": 0.3, "average_decay": 0.95},
    "MELD": {"class_weights": True, "average_decay": 0.99},
    "none": {},
}
resume = ""                 # run directory of an interrupted run: continue it from its last.pt
# -----------------------------------------------------------------------------
HYPERPARAMETERS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}
MODEL_KEYS = [f.name for f in fields(MALNConfig) if f.name not in ("feature_sizes", "n_classes", "max_positions")]
DEFAULT_POSITIONS = 128     # the smallest position table max_positions=0 builds (the release's)


CONSTRAINTS = {  # name -> (what a valid value is, test of the value given the whole config)
    "dataset": ("'IEMOCAP', 'MELD' or 'demo' (any name with --features)", lambda v, c: v in ("IEMOCAP", "MELD", "demo") or c["features"]),
    "modalities": ("a subset of 'tav', each letter once (empty = all)", lambda v, c: set(v) <= set("tav") and len(set(v)) == len(v)),
    "valid_fraction": ("in (0, 1)", lambda v, c: 0 < v < 1),
    "select_on": ("'valid' or 'test' (the release's optimistic protocol)", lambda v, c: v in ("valid", "test")),
    "split_seed": (">= 0", lambda v, c: v >= 0),
    "demo_seed": (">= 0", lambda v, c: v >= 0),
    "demo_common": (">= 0 and finite, and given only with the generated demo set (--dataset=demo, no --features)",
                    lambda v, c: 0 <= v < float("inf") and (v == 0 or (c["dataset"] == "demo" and not c["features"]))),
    "sclm_mode": ("'speaker', 'utterance', 'release' or 'off'", lambda v, c: v in ("speaker", "utterance", "release", "off")),
    "cross_input": ("'common' or 'specific'", lambda v, c: v in ("common", "specific")),
    "sclm_positions": ("'release' or 'small'", lambda v, c: v in ("release", "small")),
    **{name: (">= 1", lambda v, c: v >= 1) for name in ("sclm_layers", "sclm_heads", "sclm_feedforward", "speaker_size",
                                                        "gru_layers", "hidden_size", "discriminator_hidden",
                                                        "epochs", "batch_size")},
    "cross_heads": (">= 1 and divide hidden_size", lambda v, c: v >= 1 and c["hidden_size"] % v == 0),
    "context_hidden": (">= 0 (0 = the feature size)", lambda v, c: v >= 0),
    "max_positions": (">= 2, or 0 (sized from the training split)", lambda v, c: v == 0 or v >= 2),
    **{name: ("in [0, 1)", lambda v, c: 0 <= v < 1) for name in ("input_dropout", "sclm_dropout", "context_dropout", "specific_dropout",
                                                               "common_dropout", "discriminator_dropout", "dropout")},
    **{name: (">= 0 and finite", lambda v, c: 0 <= v < float("inf")) for name in ("gradient_reversal", "unimodal_weight",
                                                                                  "adversarial_weight", "orthogonality_weight",
                                                                                  "weight_decay")},
    "learning_rate": ("> 0 and finite", lambda v, c: 0 < v < float("inf")),
    "average_decay": ("in [0, 1)", lambda v, c: 0 <= v < 1),
    "lr_schedule": ("'cosine' or 'constant'", lambda v, c: v in ("cosine", "constant")),
    "reversal_schedule": ("'constant' or 'dann'", lambda v, c: v in ("constant", "dann")),
    "adversarial_objective": ("'reversal' or 'confusion'", lambda v, c: v in ("reversal", "confusion")),
    "common_last_layer": ("'shared' or 'separate'", lambda v, c: v in ("shared", "separate")),
    "seed": (">= 0", lambda v, c: v >= 0),
    "threads": (">= 0 (0 = torch's default)", lambda v, c: v >= 0),
    "seeds": ("comma-separated integers >= 0, each once, e.g. 1,2,3", lambda v, c: not v or seed_list_of(v) is not None),
    "device": ("'auto', 'cpu', or an available 'cuda' / 'cuda:N' / 'mps'", lambda v, c: device_available(v)),
}


def seed_list_of(text):
    """The seeds of a --seeds value, e.g. '1,2,3' -> [1, 2, 3]; None unless each is an integer >= 0 given once."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdecimal() for part in parts) or len(set(map(int, parts))) != len(parts):
        return None
    return [int(part) for part in parts]


def check_config(config):
    """Stop with one message naming every hyperparameter whose value is out of its range."""
    wrong = [f"--{name}={config[name]}: must be {requirement}" for name, (requirement, valid) in CONSTRAINTS.items()
             if name in config and not valid(config[name], config)]
    if wrong:
        raise SystemExit("\n".join(wrong))
    return config


def device_available(name):
    try:
        device = resolve_device(name)
    except RuntimeError:
        return False
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    return device.type == "cpu" or (device.type == "mps" and torch.backends.mps.is_available())


def parse_overrides(argv, defaults=HYPERPARAMETERS):
    """--name=value pairs onto a copy of the defaults, each converted to its default's type;
    a preset's values apply to what the command line leaves unset."""
    config = dict(defaults)
    given = set()
    for argument in argv:
        if not argument.startswith("--") or "=" not in argument:
            raise SystemExit(f"arguments are --name=value, got {argument!r}")
        name, value = argument[2:].split("=", 1)
        if name not in config:
            raise SystemExit(f"unknown hyperparameter {name!r}; valid names:\n  " + "\n  ".join(sorted(config)))
        kind = type(defaults[name])
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                config[name] = value.lower() in ("true", "1")
            else:
                config[name] = kind(value)
        except ValueError:
            raise SystemExit(f"--{name}={value}: expected a {kind.__name__}") from None
        given.add(name)
    name = config.get("preset") or dataset_preset(config)
    if name and name not in PRESETS:
        raise SystemExit(f"--preset={name}: choose one of {', '.join(PRESETS)}")
    config.update({k: v for k, v in PRESETS.get(name, {}).items() if k not in given})
    return check_config(config)


def dataset_preset(config):
    """The preset --dataset applies when --preset is not given: IEMOCAP's and MELD's for any file of
    that dataset, the demo's for the generated demo set, none otherwise."""
    if config.get("dataset") in ("IEMOCAP", "MELD") or (config.get("dataset") == "demo" and not config.get("features")):
        return config["dataset"]
    return ""


def build_model(feature_set, config):
    """A new MALN for this feature set's sizes and classes; its position table sized from the training
    split (or --max_positions), never from valid or test; its standardisation (when on) fitted on the training split."""
    model_args = {k: config[k] for k in MODEL_KEYS}
    model_args.update(feature_sizes=feature_set.feature_sizes, n_classes=len(feature_set.class_names),
                      max_positions=position_table_size(feature_set, config))
    model = MALN(MALNConfig(**model_args))
    if model.config.standardize:
        model.fit_standardizer(feature_set.splits["train"])
    return model


def selection_splits(feature_set, config):
    """The splits of the run's protocol: as loaded for select_on='valid'; for 'test' (the release's), the
    validation dialogues folded into train, so the whole train split trains and valid is empty."""
    if config["select_on"] == "valid" or not feature_set.splits["valid"]:
        return feature_set
    splits = feature_set.splits
    return replace(feature_set, splits={**splits, "train": splits["train"] + splits["valid"], "valid": []})


def position_table_size(feature_set, config):
    """--max_positions, or for 0 max(128, the longest training dialogue + 1 for [CLS])."""
    return config["max_positions"] or max(DEFAULT_POSITIONS, max(len(d) for d in feature_set.splits["train"]) + 1)


def check_training_lengths(feature_set, config):
    """Every dialogue of every split fits the position table the run will build (DataError naming the first that does not)."""
    check_dialogue_lengths(position_table_size(feature_set, config), config["sclm_mode"],
                           [(split, d) for split, dialogues in feature_set.splits.items() for d in dialogues],
                           feature_set.source, "the model", ", sized from the training split, never from valid or test; "
                                                           "give a larger --max_positions")


def make_batches(dialogues, batch_size, generator=None, bucket=False):
    """Batches of dialogues: by length without a generator; with one, in random order, or with
    `bucket`, shuffled, sorted by length within pools of 4 batches, then the batches shuffled,
    so that a batch holds dialogues of similar length (less padding, shorter recurrences)."""
    if generator is None:
        order = sorted(range(len(dialogues)), key=lambda i: len(dialogues[i]))
    else:
        order = torch.randperm(len(dialogues), generator=generator).tolist()
        if bucket:
            pool = 4 * batch_size
            order = [i for s in range(0, len(order), pool) for i in sorted(order[s:s + pool], key=lambda i: len(dialogues[i]))]
    groups = [[dialogues[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
    if generator is not None and bucket:
        groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
    return [(group, collate(group)) for group in groups]


def learning_rate_at(epoch, config):
    """Learning rate of an epoch (1-based): constant, or cosine decay from learning_rate to zero."""
    if config["lr_schedule"] == "constant":
        return config["learning_rate"]
    progress = (epoch - 1) / config["epochs"]
    return config["learning_rate"] * 0.5 * (1 + math.cos(math.pi * progress))


def reversal_factor_at(epoch, config):
    """Factor on the gradient-reversal lambda in an epoch (1-based): 1, or DANN's warm-up from 0 towards 1."""
    if config["reversal_schedule"] == "constant":
        return 1.0
    progress = (epoch - 1) / config["epochs"]
    return 2 / (1 + math.exp(-10 * progress)) - 1


def make_optimizer(model, config):
    """Adam (learning rate and weight decay from config); fused: the same update in one kernel (about 10x faster on cpu)."""
    return torch.optim.Adam(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"], fused=True)


def autocast(device, enabled):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def train_epoch(model, optimizer, batches, device, amp, class_weights, averaged=None):
    """One pass of the released objective over the training batches, updating the moving average
    `averaged` (or None) after every step; returns the objective's mean over batches ('loss'), the
    fused output's unweighted NLL over the labelled utterances ('nll', dropout on) and scores.
    A NaN or inf loss stops it before that batch's step on cpu, and within NON_FINITE_CHECK_EVERY
    steps elsewhere (each check waits for the device); nothing of the epoch is kept then."""
    model.train()
    check_every = 1 if device.type == "cpu" else NON_FINITE_CHECK_EVERY
    total, nll, n_labelled, labels, predictions, game = [], [], [], [], [], []
    for step, (_, batch) in enumerate(tqdm(batches, desc="train", leave=False, disable=None), 1):
        batch = to_device(batch, device)
        with autocast(device, amp):
            output = model(batch, class_weights)
        loss = output["losses"]["total"]
        total.append(loss.detach())
        if step % check_every == 0 or step == len(batches):
            check_finite_losses(total, len(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if averaged is not None:
            averaged.update_parameters(model)
        batch_nll, batch_labelled = labelled_nll(output["log_probs"].detach(), batch["labels"])
        nll.append(batch_nll)
        n_labelled.append(batch_labelled)
        game.append(game_terms(output["losses"], batch["utterance_mask"]))
        labels.append(batch["labels"].reshape(-1))
        predictions.append(output["log_probs"].detach().argmax(-1).reshape(-1))
    return {"loss": float(torch.stack(total).mean()), "nll": mean_nll(nll, n_labelled), **summarise(labels, predictions),
            **game_means(game)}


NON_FINITE_CHECK_EVERY = 16  # training steps between checks of the loss on cuda (and mps), where a check is a host sync


def check_finite_losses(losses, n_batches):
    """NonFiniteLoss naming the first of these per-batch training losses that is NaN or inf."""
    losses = torch.stack(losses)                                                  # (steps so far,)
    finite = torch.isfinite(losses)
    if not finite.all():
        index = int((~finite).nonzero()[0])
        raise NonFiniteLoss(f"batch {index + 1} of {n_batches}: the training loss is {losses[index].item()}")


def labelled_nll(log_probs, labels):
    """The fused output's NLL summed over the labelled utterances, unweighted, and their count; tensors, no sync.
    log_probs (B, N, C), labels (B, N) with -1 where unlabelled or padding."""
    targets = labels.reshape(-1)                                                  # (B*N,)
    summed = F.nll_loss(log_probs.float().reshape(-1, log_probs.size(-1)), targets, ignore_index=-1, reduction="sum")
    return summed, (targets >= 0).sum()


def mean_nll(sums, counts):
    """NLL per labelled utterance from labelled_nll's per-batch sums and counts; NaN without a labelled utterance."""
    count = int(torch.stack(counts).sum())
    return float(torch.stack(sums).sum()) / count if count else float("nan")


GAME_KEYS = ("adversarial_common", "adversarial_specific", "discriminator_common_accuracy", "discriminator_specific_accuracy")


def game_terms(losses, utterance_mask):
    """The modality discriminator's loss terms and accuracies of one batch, each times the batch's
    real utterances, (5,) with that count last; None when the run has no adversarial loss."""
    if "adversarial_common" not in losses:
        return None
    n_real = utterance_mask.sum().float()
    return torch.stack([*(losses[k].detach().float() * n_real for k in GAME_KEYS), n_real])


def game_means(game):
    """{name: mean over the epoch's real utterances} of GAME_KEYS from game_terms' rows; {} without them."""
    if not game or game[0] is None:
        return {}
    sums = torch.stack(game).sum(0).tolist()                                         # one sync
    return {k: value / sums[-1] for k, value in zip(GAME_KEYS, sums)}


def game_row(train, valid, reversal):
    """History columns of the adversarial game: the lambda used and, for train and valid, the
    discriminator's accuracies and loss terms (none when the run has no adversarial loss; NaN for
    valid when there is none, with --select_on=test)."""
    if "adversarial_common" not in train:
        return {}
    return {"gradient_reversal": reversal, **{f"{split}_{k}": result.get(k, float("nan"))
                                              for split, result in (("train", train), ("valid", valid)) for k in GAME_KEYS}}


def game_text(row):
    """The valid discriminator accuracies of a history row, for the epoch's line ('' without them)."""
    if "valid_discriminator_common_accuracy" not in row:
        return ""
    return (f" | discriminator acc common {row['valid_discriminator_common_accuracy']:.2f} "
            f"specific {row['valid_discriminator_specific_accuracy']:.2f}")


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or inf; nothing of that epoch is saved."""


def summarise(labels, predictions):
    """Accuracy and weighted-F1 over the labelled utterances of per-batch labels and predictions."""
    labels, predictions = torch.cat(labels).cpu().numpy(), torch.cat(predictions).cpu().numpy()
    labelled = labels >= 0
    return scores(labels[labelled], predictions[labelled])


@torch.no_grad()
def evaluate(model, batches, device, amp, class_weights, keep_vectors=False):
    """The fused output's unweighted NLL per labelled utterance ('nll', NaN without labels) and scores over
    the batches; with keep_vectors, also every real utterance's fused, common and specific vectors,
    dialogue id, position, label and prediction. `class_weights` weigh only the losses the model returns."""
    model.eval()
    nll, n_labelled, labels, predictions, vectors, game = [], [], [], [], [], []
    for dialogues, batch in batches:
        batch = to_device(batch, device)
        with autocast(device, amp):
            output = model(batch, class_weights)
        batch_nll, batch_labelled = labelled_nll(output["log_probs"], batch["labels"])
        nll.append(batch_nll)
        n_labelled.append(batch_labelled)
        game.append(game_terms(output["losses"], batch["utterance_mask"]))
        labels.append(batch["labels"].reshape(-1))
        predictions.append(output["log_probs"].argmax(-1).reshape(-1))
        if keep_vectors:
            vectors.append(real_utterance_vectors(dialogues, batch, output))
    result = {"nll": mean_nll(nll, n_labelled), **summarise(labels, predictions), **game_means(game)}
    real = torch.cat([b["utterance_mask"].reshape(-1) for _, b in batches]).numpy()
    result["labels"] = torch.cat(labels).cpu().numpy()[real]
    result["predictions"] = torch.cat(predictions).cpu().numpy()[real]
    if keep_vectors:
        result["vectors"] = {k: np.concatenate([v[k] for v in vectors]) for k in vectors[0]}
    return result


def real_utterance_vectors(dialogues, batch, output):
    mask = batch["utterance_mask"]
    vectors = {"fused": output["fused"][mask].float().cpu().numpy()}
    for m, x in batch["features"].items():                    # the model's inputs, before its standardisation
        vectors[f"input_{m}"] = x[mask].float().cpu().numpy()
    for kind in ("common", "specific"):
        for m, x in output[kind].items():
            vectors[f"{kind}_{m}"] = x[mask].float().cpu().numpy()
    vectors["dialogue_id"] = np.array([d.dialogue_id for d in dialogues for _ in range(len(d))])
    vectors["position"] = np.concatenate([np.arange(len(d)) for d in dialogues])
    vectors["label"] = batch["labels"][mask].cpu().numpy()
    vectors["prediction"] = output["log_probs"].argmax(-1)[mask].cpu().numpy()
    return vectors


def decomposition_probes(train_vectors, test_vectors, max_train=5000, seed=0):
    """How far the run split each modality into a common and a specific part, measured with
    linear probes (logistic regression on standardised vectors, fitted on at most `max_train`
    seeded train vectors, scored on every test vector). Fractions in [0, 1]:
    - modality_from_{common,specific}_accuracy: which modality a vector came from, each
      utterance's c_m (s_m) labelled m. Where AMDM works, common vectors sit near
      modality_chance (1 / number of modalities) and specific ones far above it. None with one
      modality, where it is undefined.
    - modality_from_common_standardised_accuracy: the same probe after each modality's common
      vectors are standardised with that modality's own train mean and std, so that a shift or a
      scale between the modalities cannot tell them apart; what is left is in the vectors' shape.
    - emotion_from_{common,specific}_{accuracy,weighted_f1}: the emotion from the
      concatenation of every modality's common (specific) vectors alone, labelled utterances.
    - common_specific_abs_cosine: mean |cosine| of an utterance's common and specific vector
      of the same modality on test, which the orthogonality loss pushes towards 0."""
    modalities = [key[len("common_"):] for key in train_vectors if key.startswith("common_")]
    result = {"modality_chance": None, "modality_from_common_accuracy": None, "modality_from_specific_accuracy": None,
              "modality_from_common_standardised_accuracy": None}
    if len(modalities) > 1:
        result["modality_chance"] = 1 / len(modalities)
        for kind in ("common", "specific"):
            train_x, train_y = stack_by_modality(train_vectors, kind, modalities)
            test_x, test_y = stack_by_modality(test_vectors, kind, modalities)
            fitted = linear_probe(train_x, train_y, test_x, test_y, max_train, seed)
            result[f"modality_from_{kind}_accuracy"] = fitted and fitted["accuracy"]
        standardised = [standardised_by_modality(train_vectors, test_vectors, m) for m in modalities]
        train_x, test_x = (np.concatenate([pair[i] for pair in standardised]) for i in (0, 1))
        fitted = linear_probe(train_x, stack_by_modality(train_vectors, "common", modalities)[1], test_x,
                              stack_by_modality(test_vectors, "common", modalities)[1], max_train, seed)
        result["modality_from_common_standardised_accuracy"] = fitted and fitted["accuracy"]
    else:
        result["note"] = "one modality: modality identification is undefined"
    train_labelled, test_labelled = train_vectors["label"] >= 0, test_vectors["label"] >= 0
    for kind in ("common", "specific"):
        train_x = np.concatenate([train_vectors[f"{kind}_{m}"] for m in modalities], axis=1)[train_labelled]  # (n, M*H)
        test_x = np.concatenate([test_vectors[f"{kind}_{m}"] for m in modalities], axis=1)[test_labelled]
        fitted = linear_probe(train_x, train_vectors["label"][train_labelled], test_x, test_vectors["label"][test_labelled],
                              max_train, seed)
        for name in ("accuracy", "weighted_f1"):
            result[f"emotion_from_{kind}_{name}"] = fitted and fitted[name]
    cosines = [np.abs(cosine(test_vectors[f"common_{m}"], test_vectors[f"specific_{m}"])) for m in modalities]
    result["common_specific_abs_cosine"] = float(np.mean(np.concatenate(cosines)))
    return result


def standardised_by_modality(train_vectors, test_vectors, m):
    """Modality m's train and test common vectors, each standardised with m's own train mean and std."""
    train, test = train_vectors[f"common_{m}"], test_vectors[f"common_{m}"]
    mean, std = train.mean(0), np.maximum(train.std(0), 1e-12)
    return (train - mean) / std, (test - mean) / std


def stack_by_modality(vectors, kind, modalities):
    """Every modality's `kind` vectors one under the other, (n*M, H), and the modality index of each row, (n*M,)."""
    stacked = np.concatenate([vectors[f"{kind}_{m}"] for m in modalities])
    return stacked, np.repeat(np.arange(len(modalities)), len(vectors[f"{kind}_{modalities[0]}"]))


def linear_probe(train_x, train_y, test_x, test_y, max_train, seed):
    """Accuracy and weighted-F1 (fractions) on test of a logistic regression fitted on at most
    max_train seeded training rows; None when train holds fewer than two classes or test is empty."""
    if len(np.unique(train_y)) < 2 or len(test_y) == 0:
        return None
    if len(train_y) > max_train:
        chosen = np.sort(np.random.default_rng(seed).choice(len(train_y), max_train, replace=False))
        train_x, train_y = train_x[chosen], train_y[chosen]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    with warnings.catch_warnings():  # a probe stopped at max_iter is still a probe
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train_x, train_y)
    return {name: value / 100 for name, value in scores(test_y, probe.predict(test_x)).items()}


def cosine(a, b):
    """Row-wise cosine similarity of two (n, H) arrays, (n,)."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(norms, 1e-12)


def logistic_regression_baseline(feature_set, max_iterations=2000):
    """What context and speakers have to beat: logistic regression on single utterances of the
    run's inputs (each utterance's modalities concatenated, standardised), fitted on the labelled
    train utterances, scored on test. -> {'test_weighted_f1', 'test_accuracy'} in percent (NaN
    when test has no label); None when train has fewer than two classes."""
    def utterances(split):
        dialogues = feature_set.splits[split]
        x = np.concatenate([torch.cat([d.features[m] for m in feature_set.modalities], 1).numpy() for d in dialogues])
        y = np.concatenate([d.labels.numpy() for d in dialogues])
        return x[y >= 0], y[y >= 0]

    train_x, train_y = utterances("train")
    if len(np.unique(train_y)) < 2:
        return None
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iterations))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(train_x, train_y)
    test_x, test_y = utterances("test")
    figures = scores(test_y, classifier.predict(test_x)) if len(test_y) else scores([], [])
    return {f"test_{name}": value for name, value in figures.items()}


def baseline_line(baseline, model_weighted_f1):
    """The logistic-regression baseline beside the model's test weighted-F1, in one line."""
    if baseline is None:
        return "logistic regression on single utterances: undefined (train has fewer than two classes)"
    if not math.isfinite(baseline["test_weighted_f1"]):
        return "logistic regression on single utterances: no labelled test utterance to score"
    return (f"logistic regression on single utterances (fitted on train): test weighted-F1 "
            f"{baseline['test_weighted_f1']:.2f}, accuracy {baseline['test_accuracy']:.2f}; the model: "
            f"{model_weighted_f1:.2f} ({model_weighted_f1 - baseline['test_weighted_f1']:+.2f})")


def decomposition_line(decomposition):
    """The probe figures in one line of the run's report."""
    d = decomposition
    if d["modality_chance"] is None:
        modality = "modality identification undefined (one modality)"
    else:
        modality = (f"modality from common {d['modality_from_common_accuracy']:.2f} (chance {d['modality_chance']:.2f}; "
                    f"each modality standardised {d['modality_from_common_standardised_accuracy']:.2f}), "
                    f"from specific {d['modality_from_specific_accuracy']:.2f}")
    emotion = "; ".join(f"emotion from {kind} accuracy {d[f'emotion_from_{kind}_accuracy']:.2f} "
                        f"wF1 {d[f'emotion_from_{kind}_weighted_f1']:.2f}"
                        if d[f"emotion_from_{kind}_accuracy"] is not None else f"emotion from {kind} undefined"
                        for kind in ("common", "specific"))
    return (f"decomposition (linear probes, fitted on train, scored on test): {modality}; {emotion}; "
            f"common-specific |cosine| {d['common_specific_abs_cosine']:.2f}")


def inverse_frequency_weights(dialogues, n_classes, device):
    counts = torch.bincount(torch.cat([d.labels[d.labels >= 0] for d in dialogues]), minlength=n_classes).float()
    weights = counts.sum() / (n_classes * counts.clamp(min=1))
    return weights.to(device)


def set_cudnn_determinism(config):
    """--cudnn_deterministic=True asks cuDNN for its deterministic algorithms, as the release does; False leaves the setting as it is."""
    if config["cudnn_deterministic"]:
        torch.backends.cudnn.deterministic = True


def set_threads(config):
    """torch's cpu thread count from --threads (0 leaves torch's default)."""
    if config["threads"]:
        torch.set_num_threads(config["threads"])


def resolve_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def run(config, feature_set=None):
    """Train one model with config['seed']; select the epoch on validation; save and return the metrics."""
    started = time.time()
    set_threads(config)
    if feature_set is None:
        feature_set = load_dataset(config["dataset"], config["features"], config["av_features"], config["modalities"],
                                   config["valid_fraction"], config["split_seed"], config["trust_pickle"], config["demo_seed"],
                                   config["demo_common"])
    feature_set = selection_splits(feature_set, config)
    check_training_splits(feature_set, config["select_on"])
    check_training_lengths(feature_set, config)
    set_cudnn_determinism(config)
    device = resolve_device(config["device"])
    set_seed(config["seed"])
    model = build_model(feature_set, config).to(device)
    optimizer = make_optimizer(model, config)
    averaged = moving_average(model, config["average_decay"])
    evaluated = averaged.module if averaged is not None else model   # the weights validated, selected and saved
    generator = torch.Generator().manual_seed(config["seed"])
    weights = inverse_frequency_weights(feature_set.splits["train"], len(feature_set.class_names), device) \
        if config["class_weights"] else None
    eval_batches = {split: make_batches(feature_set.splits[split], config["batch_size"]) for split in ("train", "valid", "test")}
    config = open_run_directory(config)
    run_dir = run_directory(config)
    print(f"{feature_set.source} ({feature_set.layout}): modalities {feature_set.modalities} {feature_set.feature_sizes}, "
          f"{len(feature_set.class_names)} classes, dialogues train/valid/test "
          f"{'/'.join(str(len(feature_set.splits[s])) for s in ('train', 'valid', 'test'))}; "
          f"{model.n_parameters() / 1e6:.2f}M parameters on {device}; writing to {run_dir}")

    history, best, best_state = [], None, None
    if config["resume"]:
        history, best, best_state = restore(run_dir, model, optimizer, generator, device, averaged)
        if best["epoch"] == len(history):  # best.pt may predate this epoch (see save_last)
            save_best(run_dir, best_state, model, config, feature_set, best)
        print(f"resuming after epoch {len(history)} (best so far: epoch {best['epoch']})")
    for epoch in range(len(history) + 1, config["epochs"] + 1):
        epoch_start = time.time()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(epoch, config)
        model.amdm.reversal_factor = reversal_factor_at(epoch, config)
        if config["reseed_every_epoch"]:
            set_seed(config["seed"])
            generator.manual_seed(config["seed"])
        train_batches = make_batches(feature_set.splits["train"], config["batch_size"], generator, config["bucket_batches"])
        try:
            train = train_epoch(model, optimizer, train_batches, device, config["amp"], weights, averaged)
        except NonFiniteLoss as error:
            raise NonFiniteLoss(f"epoch {epoch}, {error}. Stopped; {non_finite_note(run_dir, epoch, config)}") from None
        valid = evaluate(evaluated, eval_batches["valid"], device, config["amp"], weights) if eval_batches["valid"] \
            else {"nll": float("nan"), "accuracy": float("nan"), "weighted_f1": float("nan")}  # select_on=test
        test = evaluate(evaluated, eval_batches["test"], device, config["amp"], weights)
        row = {"epoch": epoch, "seconds": time.time() - epoch_start, "train_loss": train["loss"]}  # loss: the objective
        for split, result in (("train", train), ("valid", valid), ("test", test)):
            row.update({f"{split}_{k}": result[k] for k in ("nll", "accuracy", "weighted_f1")})
        row.update(game_row(train, valid, config["gradient_reversal"] * model.amdm.reversal_factor))
        history.append(row)
        selected_on = config["select_on"]
        improved = best is None or row[f"{selected_on}_weighted_f1"] > best[f"{selected_on}_weighted_f1"]
        tqdm.write(f"epoch {epoch:3d} | train objective {row['train_loss']:.3f} | " + " | ".join(
            f"{s} nll {row[f'{s}_nll']:.3f} acc {row[f'{s}_accuracy']:5.2f} wF1 {row[f'{s}_weighted_f1']:5.2f}"
            for s in ("train", "valid", "test")) + game_text(row) + f" | {row['seconds']:.1f}s" + (" *" if improved else ""))
        if improved:
            best, best_state = row, copy.deepcopy(evaluated.state_dict())
        save_last(run_dir, model, optimizer, generator, device, config, feature_set, history, best, averaged)
        if improved:
            save_best(run_dir, best_state, model, config, feature_set, best)
        atomic_write(os.path.join(run_dir, "history.csv"), lambda path: pd.DataFrame(history).to_csv(path, index=False))

    model.load_state_dict(best_state)
    optimistic = best_test_epoch(history)
    exported = [split for split in (("train", "valid", "test") if config["export_features"] else ("train", "test"))
                if feature_set.splits[split]]                                      # probes: train and test
    final = {split: evaluate(model, eval_batches[split], device, config["amp"], weights, keep_vectors=True) for split in exported}
    report(feature_set.class_names, final["test"]["labels"], final["test"]["predictions"])
    metrics = {
        "source": feature_set.source, "layout": feature_set.layout, "modalities": feature_set.modalities,
        "class_names": feature_set.class_names, "seed": config["seed"], "best_epoch": best["epoch"],
        "valid_weighted_f1": best["valid_weighted_f1"], "valid_accuracy": best["valid_accuracy"],
        "test_weighted_f1": final["test"]["weighted_f1"], "test_accuracy": final["test"]["accuracy"],
        "optimistic_best_test_epoch": optimistic["epoch"], "optimistic_test_weighted_f1": optimistic["test_weighted_f1"],
        "optimistic_test_accuracy": optimistic["test_accuracy"], "parameters": model.n_parameters(),
        "seconds_per_epoch": float(np.mean([r["seconds"] for r in history])), "seconds": time.time() - started,
        "decomposition": decomposition_probes(final["train"]["vectors"], final["test"]["vectors"]),
        "logistic_regression": logistic_regression_baseline(feature_set),
        "config": config, **feature_set.info,
    }
    if config["export_features"]:
        for split, result in final.items():
            atomic_write(os.path.join(run_dir, f"features_{split}.npz"), lambda path: np.savez(path, **result["vectors"]))
    write_json(os.path.join(run_dir, "metrics.json"), metrics)  # the last output: a run with it has all the others
    print_outcome(best, metrics, optimistic)
    return metrics


def run_outputs(config):
    """The files a finished run's directory holds; metrics.json, written last, comes last."""
    exports = [f"features_{split}.npz" for split in ("train", "valid", "test")] if config.get("export_features") else []
    return ["last.pt", "best.pt", "history.csv", *exports, "metrics.json"]


def finished_metrics(run_dir):
    """A finished run's metrics.json, or None while the run is unfinished: it has no metrics.json, or one
    of the outputs its run writes before metrics.json (run_outputs) is missing (a run an earlier version
    stopped during its export). A metrics.json that does not read is one ValueError naming it."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.lexists(path):
        return None
    check_regular_file(path, "metrics.json")
    try:
        with open(path) as f:
            metrics = json.load(f)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path}: not a metrics.json that reads ({type(error).__name__}: {error})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("config"), dict):
        raise ValueError(f"{path}: not the metrics of a run of train_MALN.py (a {type(metrics).__name__} without 'config')")
    if not all(os.path.isfile(os.path.join(run_dir, name)) for name in run_outputs(metrics["config"])):
        return None
    return metrics


def best_test_epoch(history):
    """The row of the best test weighted-F1 (the release's optimistic protocol); NaN scores and no
    epoch when the test split has no labels."""
    scored = [row for row in history if math.isfinite(row["test_weighted_f1"])]
    if not scored:
        return {"epoch": None, "test_weighted_f1": float("nan"), "test_accuracy": float("nan")}
    return max(scored, key=lambda row: row["test_weighted_f1"])


def print_outcome(best, metrics, optimistic):
    if metrics["config"]["select_on"] == "test":
        selected = (f"[optimistic, the release's protocol: --select_on=test, trained on the whole train split] selected "
                    f"epoch {best['epoch']} on test weighted-F1 {best['test_weighted_f1']:.2f}")
    else:
        selected = f"selected epoch {best['epoch']} on validation weighted-F1 {best['valid_weighted_f1']:.2f}"
    if optimistic["epoch"] is None:
        print(f"{selected}; the test split has no labelled utterance, so there are no test scores (null in metrics.json)")
        return
    print(f"{selected}: test weighted-F1 {metrics['test_weighted_f1']:.2f}, accuracy {metrics['test_accuracy']:.2f}")
    print(f"[optimistic, the release's protocol] best test epoch {optimistic['epoch']}: "
          f"test weighted-F1 {optimistic['test_weighted_f1']:.2f}, accuracy {optimistic['test_accuracy']:.2f}")
    print(baseline_line(metrics["logistic_regression"], metrics["test_weighted_f1"]))
    print(decomposition_line(metrics["decomposition"]))
    return metrics


def claim_run_directory(config):
    """Create the run's directory; it must not exist, so a finished (or running) run is never
    overwritten. Creating it is atomic: two runs never share one. An empty run_name becomes
    <dataset>_<modalities>_<date-time>, with -2, -3, ... appended while that is taken.
    -> config with its run_name."""
    check_writable_place(os.path.abspath(config["out_dir"]), "--out_dir")
    stem = config["run_name"] or f"{config['dataset']}_{config['modalities'] or 'all'}_{time.strftime('%Y%m%d-%H%M%S')}"
    name = stem
    path = os.path.join(config["out_dir"], name)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for attempt in itertools.count(2):
            try:
                os.mkdir(path)
                return {**config, "run_name": name}
            except FileExistsError:
                if config["run_name"]:
                    raise OutputError(run_taken(path)) from None
                name = f"{stem}-{attempt}"
                path = os.path.join(config["out_dir"], name)
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"--out_dir: cannot create the run directory {path}: {error.strerror or error}") from None


def run_taken(path):
    if os.path.isdir(path) and not os.path.lexists(os.path.join(path, "last.pt")) and not os.listdir(path):
        return (f"{path} exists, empty: a run stopped there before its first epoch finished, so there is nothing to "
                f"resume; remove it, or choose another --run_name")
    return (f"{path} exists: a run's directory is never overwritten; continue that run with --resume={path}, "
            f"or choose another --run_name")


def check_run_name_free(config):
    """Before the data is loaded: refuse a --run_name that is taken and an --out_dir that cannot hold runs."""
    check_writable_place(os.path.abspath(config["out_dir"]), "--out_dir")
    path = os.path.join(config["out_dir"], config["run_name"])
    if config["run_name"] and os.path.lexists(path):
        raise OutputError(run_taken(path))


def open_run_directory(config):
    """The directory of run(): an interrupted run's (cleared of the temporary files a killed write
    left), an empty one main() claimed, or a new one claimed here. -> config with its run_name."""
    if config["resume"]:
        remove_stale_temporaries(config["resume"])
        return config
    path = run_directory(config)
    if config["run_name"] and os.path.isdir(path) and not os.listdir(path):
        return config
    return claim_run_directory(config)


def run_directory(config):
    return config["resume"] or os.path.join(config["out_dir"], config["run_name"])


def save_best(run_dir, best_state, model, config, feature_set, best):
    save_checkpoint({"model": best_state, "model_args": model.model_args(), "config": config,
                     "class_names": feature_set.class_names, "epoch": best["epoch"], "metrics": best},
                    os.path.join(run_dir, "best.pt"))


def moving_average(model, decay):
    """An exponential moving average of model's weights (and buffers), or None when decay is 0."""
    if not decay:
        return None
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay),
                                               use_buffers=True)


def save_last(run_dir, model, optimizer, generator, device, config, feature_set, history, best, averaged=None):
    """What --resume needs after this epoch. Written before best.pt: when the newest epoch is the
    best, its state is this file's model (or moving average), so a kill between the two writes loses nothing."""
    rng = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "model_args": model.model_args(),
                     "config": config, "class_names": feature_set.class_names, "epoch": len(history),
                     "history": history, "best": best, "rng": rng,
                     **({"averaged": averaged.state_dict()} if averaged is not None else {})}, os.path.join(run_dir, "last.pt"))


def restore(run_dir, model, optimizer, generator, device, averaged=None):
    """Load an interrupted run's last.pt into model, the moving average (when there is one),
    optimizer and the RNGs; -> history, best row, best state."""
    path = os.path.join(run_dir, "last.pt")
    last = load_checkpoint(path)
    check_checkpoint(last, path, LAST_CHECKPOINT_FIELDS + (("averaged",) if averaged is not None else ()))
    load_model_state(model, last["model"], path)
    if averaged is not None:
        load_model_state(averaged, last["averaged"], path)
    check_adam_state(optimizer, last["optimizer"], path)
    try:
        optimizer.load_state_dict(last["optimizer"])
        torch.set_rng_state(last["rng"]["torch"])
        generator.set_state(last["rng"]["generator"])
        if "cuda" in last["rng"] and device.type == "cuda":
            torch.cuda.set_rng_state(last["rng"]["cuda"], device)
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise ValueError(f"{path}: its optimizer or random-number states do not fit this run "
                         f"({type(error).__name__}: {error})") from None
    best = last["best"]
    if best["epoch"] == last["epoch"]:
        return last["history"], best, copy.deepcopy(averaged.module.state_dict()) if averaged is not None else last["model"]
    best_path = os.path.join(run_dir, "best.pt")
    best_checkpoint = load_checkpoint(best_path)
    check_checkpoint(best_checkpoint, best_path, ("model", "epoch"))
    if best_checkpoint["epoch"] != best["epoch"]:
        raise ValueError(f"{run_dir}: best.pt holds epoch {best_checkpoint['epoch']}, last.pt expects epoch {best['epoch']}")
    check_state_shapes(model, best_checkpoint["model"], best_path)  # loaded only after the last epoch: checked now
    check_finite(best_checkpoint["model"], best_path, "weights")
    return last["history"], best, best_checkpoint["model"]


def non_finite_note(run_dir, epoch, config):
    """What to do after a NaN or inf loss in `epoch`: resuming would repeat the same computation."""
    kept = f"{os.path.join(run_dir, 'last.pt')} holds epoch {epoch - 1}, the last good one" if epoch > 1 else "no epoch had finished"
    return (f"{kept}. Resuming would meet the same loss: start a new run with a lower --learning_rate (this one: "
            f"{config['learning_rate']:g}), or check the features for extreme values")


def saved_note(run_dir):
    """Where an interrupted run stands, and how to continue it."""
    path = os.path.join(run_dir, "last.pt")
    if not os.path.exists(path):
        return "no epoch had finished, so there is nothing to resume"
    return f"{path} holds the last finished epoch; continue with: python train_MALN.py --resume={run_dir}"


SAFETY_SWITCHES = ("trust_pickle",)  # never taken from a file: only the command line widens trust


def resumed_config(config, given):
    """The saved settings of the run in config['resume']; only --device, --epochs (check_resumed_epochs) and --threads may change.
    A safety switch (trust_pickle) is never read from the run folder: it is the command line's, whatever
    last.pt says, so a shared run folder cannot make this process unpickle code."""
    changed = given - {"resume", "device", "epochs", "threads", *SAFETY_SWITCHES}
    if changed:
        raise SystemExit(f"--resume continues a run with its own settings; only --device, --epochs, --threads and "
                         f"--trust_pickle may be given with it, not {', '.join('--' + name for name in sorted(changed))}")
    path = os.path.join(config["resume"], "last.pt")
    try:
        if not os.path.lexists(path) and os.path.isdir(config["resume"]):
            raise ValueError(f"{config['resume']} holds no last.pt: no epoch of that run finished, so there is nothing to "
                             f"resume; remove the directory, or start a new run under another --run_name")
        last = load_checkpoint(path)
        check_checkpoint(last, path, LAST_CHECKPOINT_FIELDS)
        saved = {name: value for name, value in last["config"].items() if name not in SAFETY_SWITCHES}
        check_saved_config(saved, path, given)
        check_saved_model(saved, last, path)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: cannot resume: {error}") from None
    resumed = check_config({**HYPERPARAMETERS, **saved, **{name: config[name] for name in given}})
    check_resumed_epochs(resumed, saved.get("epochs", resumed["epochs"]), last["epoch"])
    return resumed


def check_resumed_epochs(config, saved_epochs, finished):
    """A resumed run equals an uninterrupted one of config['epochs'] epochs: --epochs may extend a run whose
    learning rate does not depend on the epoch count (constant), not a cosine run, whose finished epochs
    followed the decay over saved_epochs; and it may not end before the `finished` epochs."""
    epochs = config["epochs"]
    if epochs < finished:
        raise SystemExit(f"error: --epochs={epochs}: the run to resume has finished {finished} epochs already")
    if epochs != saved_epochs and config["lr_schedule"] == "cosine":
        raise SystemExit(f"error: --epochs={epochs}: this run's cosine schedule decays over its {saved_epochs} epochs and "
                         f"a resumed run keeps it (another --epochs would change the learning rate in mid-run); resume "
                         f"without --epochs, or start a new run of {epochs} epochs")


SAVED_PATHS = ("features", "av_features")  # input files a saved config names: checked like command-line paths


def check_saved_config(saved, path, given=()):
    """Every saved hyperparameter this version knows has its type (an int where a float is expected is
    fine) and meets its CONSTRAINTS, and every input file it names is a regular file; the message names
    the file and the setting, not a flag the user never typed. Those the command line gives (`given`)
    are the command line's to check."""
    for name, value in saved.items():
        kind = type(HYPERPARAMETERS.get(name, value))
        if not (type(value) is kind or (kind is float and type(value) is int)):
            raise ValueError(f"{path}: its saved setting {name}={value!r} is not a {kind.__name__}")
    merged = {**HYPERPARAMETERS, **saved}
    for name, (requirement, valid) in CONSTRAINTS.items():
        if name in saved and name not in given and not valid(saved[name], merged):
            raise ValueError(f"{path}: its saved setting {name}={saved[name]!r} must be {requirement}")
    for name in SAVED_PATHS:
        if saved.get(name):
            try:
                check_regular_file(saved[name], "feature file")
            except (FileNotFoundError, ValueError) as error:
                raise ValueError(f"{path}: its saved setting {name}: {error}") from None


def check_saved_model(saved, last, path):
    """The model the saved settings build is the one last.pt holds (its model_args, sized against its
    tensors before anything is allocated): run() builds it from those settings before loading last.pt."""
    MALN.checkpoint_config(last, path)
    for name in MODEL_KEYS:
        if name in last["model_args"] and saved.get(name, HYPERPARAMETERS.get(name)) != last["model_args"][name]:
            raise ValueError(f"{path}: its saved setting {name}={saved.get(name)!r} is not the one its model was built "
                             f"with (field 'model_args': {name}={last['model_args'].get(name)!r})")


def report(names, labels, predictions):
    """Classification report and confusion matrix, with class names, over labelled utterances."""
    labelled = labels >= 0
    if not labelled.any():
        print("no labelled test utterance: no classification report")
        return
    print(classification_report(labels[labelled], predictions[labelled], labels=range(len(names)), target_names=names,
                                digits=4, zero_division=0))
    matrix = confusion_matrix(labels[labelled], predictions[labelled], labels=range(len(names)))
    print("confusion matrix (rows: true, columns: predicted)")
    print(pd.DataFrame(matrix, index=names, columns=names).to_string())


@torch.no_grad()
def predict(model, feature_set, split="", batch_size=32):
    """A table with one row per utterance of `split` (every split when empty): split, dialogue_id,
    position, speaker, the predicted class, its probability, and the gold label ('' where
    unlabelled). `model` comes from MALN.from_checkpoint, whose checkpoint names the classes;
    the feature set must have the checkpoint's modalities and feature sizes."""
    needed, given = model.config.feature_sizes, feature_set.feature_sizes
    if any(given.get(m) != size for m, size in needed.items()):
        raise DataError(f"{feature_set.source}: its feature sizes {given} do not fit the checkpoint's {needed}")
    if split not in ("", *feature_set.splits):
        raise ValueError(f"the split to predict is one of {', '.join(feature_set.splits)}, or empty for all; got {split!r}")
    chosen = [(name, d) for name, dialogues in feature_set.splits.items() if split in ("", name) for d in dialogues]
    if not chosen:
        raise DataError(f"{feature_set.source}: no {split} dialogue to predict")
    check_dialogue_lengths(model.config.max_positions, model.config.sclm_mode, chosen, feature_set.source)
    model.eval()
    device = next(model.parameters()).device
    tables = []
    for start in range(0, len(chosen), batch_size):
        group = chosen[start:start + batch_size]
        batch = to_device(collate([d for _, d in group]), device)
        log_probs = model({**batch, "labels": None})["log_probs"]                               # (B, N, C)
        probability, prediction = log_probs.float().exp().max(-1)                                # (B, N) each
        for b, (name, d) in enumerate(group):
            tables.append(pd.DataFrame({
                "split": name, "dialogue_id": d.dialogue_id, "position": range(len(d)),
                "speaker": d.speaker_names or d.speakers.tolist(),
                "prediction": [model.checkpoint["class_names"][k] for k in prediction[b, :len(d)].tolist()],
                "probability": probability[b, :len(d)].tolist(),
                "label": [feature_set.class_names[k] if k >= 0 else "" for k in d.labels.tolist()],
            }))
    return pd.concat(tables, ignore_index=True)


def check_dialogue_lengths(max_positions, sclm_mode, chosen, source, whose="the checkpoint's model", remedy=""):
    """Every (split, dialogue) chosen fits a position table of max_positions rows (DataError naming the first that does not)."""
    longest = max_positions - 1 if sclm_mode != "off" else None  # one position is [CLS]
    for split, dialogue in chosen:
        if longest is not None and len(dialogue) > longest:
            raise DataError(f"{source}: {split} dialogue {dialogue.dialogue_id!r} has {len(dialogue)} utterances; "
                            f"{whose} reads at most {longest} (its max_positions={longest + 1}){remedy}")


def load_prediction_model(path, device):
    """MALN.from_checkpoint; a checkpoint it cannot build a model from is one ValueError naming the file."""
    try:
        model = MALN.from_checkpoint(path, device)
    except (TypeError, KeyError, AttributeError, RuntimeError) as error:
        raise ValueError(f"{path}: cannot build a model from this checkpoint ({type(error).__name__}: {error})") from None
    check_checkpoint(model.checkpoint, path, ("model_args", "class_names"))
    return model


HOLD_OUT_SETTINGS = ("valid_fraction", "split_seed", "select_on")  # which dialogues form a run's train and valid splits


def write_predictions(config, given=frozenset()):
    """--predict=CHECKPOINT: the checkpoint's class and its probability for every utterance, as a CSV,
    at a path that is none of the inputs and no existing file. The splits are the checkpoint's: its saved
    HOLD_OUT_SETTINGS, not the command line's (`given`: the options the command line gave)."""
    path = config["predictions"] or os.path.join(os.path.dirname(config["predict"]), "predictions.csv")
    check_output_path(path, "--predictions", [config["predict"], config["features"], config["av_features"]])
    model = load_prediction_model(config["predict"], resolve_device(config["device"]))
    splits = checkpoint_splits(model.checkpoint, config, given)
    feature_set = load_dataset(config["dataset"], config["features"], config["av_features"], "".join(model.config.modalities),
                               splits["valid_fraction"], splits["split_seed"], config["trust_pickle"], config["demo_seed"],
                               config["demo_common"])
    feature_set = selection_splits(feature_set, splits)
    table = predict(model, feature_set, config["predict_split"], config["batch_size"])
    atomic_write(path, lambda temporary: spreadsheet_safe(table).to_csv(temporary, index=False))
    labelled = table[table["label"] != ""]
    accuracy = f", accuracy {100 * (labelled['prediction'] == labelled['label']).mean():.2f} on them" if len(labelled) else ""
    print(f"wrote {len(table)} predictions to {path} ({len(labelled)} utterances labelled{accuracy})")


def checkpoint_splits(checkpoint, config, given):
    """The HOLD_OUT_SETTINGS the checkpoint was trained with (the command line's where it saved none);
    one given on the command line with another value is refused."""
    saved = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    splits = {name: saved.get(name, config[name]) for name in HOLD_OUT_SETTINGS}
    try:  # a file's settings meet the command line's rules, named by the file
        check_saved_config({name: saved[name] for name in HOLD_OUT_SETTINGS if name in saved}, config["predict"])
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    differing = [name for name in HOLD_OUT_SETTINGS if name in given and config[name] != splits[name]]
    if differing:
        name = differing[0]
        raise SystemExit(f"error: --{name}={config[name]}: {config['predict']} was trained with {name}={splits[name]}; "
                         f"--predict takes the splits from the checkpoint")
    return splits


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula (OWASP, CSV injection)


def spreadsheet_safe(table):
    """The table with a ' put before every text cell that starts like a formula (a speaker name
    '=HYPERLINK(...)' copied from a feature file), so that a spreadsheet shows the text and runs nothing."""
    def escaped(cell):
        return "'" + cell if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) else cell
    return table.map(escaped)


def convert_release(config):
    """--from_release=FILE: the release's trained MALN as out_dir/run_name/best.pt, which --predict,
    MALN.from_checkpoint and the exports accept."""
    heads = {"sclm_heads": config["sclm_heads"], "cross_heads": config["cross_heads"]}  # the release's tensors do not tell them
    model = MALN.from_release(config["from_release"], **heads)
    names = [name.strip() for name in config["class_names"].split(",")] if config["class_names"] \
        else CLASS_NAMES.get(config["dataset"], [])
    if len(names) != model.config.n_classes or not all(names):
        raise SystemExit(f"--class_names: {config['from_release']} has {model.config.n_classes} classes; name them in "
                         f"order, e.g. --class_names=hap,sad,neu,ang,exc,fru (IEMOCAP's)")
    if len(set(names)) != len(names):
        raise SystemExit(f"--class_names={config['class_names']}: names a class twice; each of the "
                         f"{model.config.n_classes} classes needs its own name")
    path = os.path.join(config["out_dir"], config["run_name"] or "release", "best.pt")
    check_output_path(path, "--run_name", [config["from_release"]])
    save_checkpoint({"model": model.state_dict(), "model_args": model.model_args(), "config": config,
                     "class_names": names, "epoch": 0, "metrics": {}, "release_file": config["from_release"]}, path)
    print(f"wrote {path}: the release's model ({model.n_parameters() / 1e6:.2f}M parameters, feature sizes "
          f"{model.config.feature_sizes}, classes {', '.join(names)}; attention heads, which the release's tensors do "
          f"not tell, from the command line: {' '.join(f'--{k}={v}' for k, v in heads.items())})")


def main(argv):
    config = parse_overrides(argv)
    set_threads(config)
    if config["from_release"]:
        try:
            convert_release(config)
        except (ValueError, OSError) as error:  # not a release state dict, OutputError
            raise SystemExit(f"error: {error}") from None
        return
    if config["predict"]:
        try:
            write_predictions(config, {argument[2:].split("=", 1)[0] for argument in argv})
        except (ValueError, OSError) as error:  # DataError, a checkpoint that does not load, OutputError
            raise SystemExit(f"error: {error}") from None
        return
    if config["resume"]:
        config = resumed_config(config, {argument[2:].split("=", 1)[0] for argument in argv})
    try:
        if not config["resume"]:
            check_run_name_free(config)
        feature_set = load_dataset(config["dataset"], config["features"], config["av_features"], config["modalities"],
                                   config["valid_fraction"], config["split_seed"], config["trust_pickle"], config["demo_seed"],
                                   config["demo_common"])
        feature_set = selection_splits(feature_set, config)
        check_training_splits(feature_set, config["select_on"])
        check_training_lengths(feature_set, config)
        if not config["resume"]:
            config = claim_run_directory(config)  # one directory, or the one holding a directory per seed
    except (ValueError, OSError) as error:  # DataError, OutputError
        raise SystemExit(f"error: {error}") from None
    seed_list = seed_list_of(config["seeds"]) if config["seeds"] else [config["seed"]]
    if len(seed_list) == 1 or config["resume"]:
        run_configs = [{**config, "seed": config["seed"] if config["resume"] else seed_list[0]}]
    else:
        run_configs = [{**config, "seed": s, "run_name": os.path.join(config["run_name"], f"seed{s}")} for s in seed_list]
    results = [run_stopping_cleanly(run_config, feature_set) for run_config in run_configs]
    if len(results) > 1:
        write_seed_summary(config, seed_list, results)


def write_seed_summary(config, seed_list, results):
    """Mean and std over seeds of the runs' metrics, printed and written to out_dir/run_name/summary.json."""
    summary = {"seeds": seed_list, "config": config}
    for key in ("test_weighted_f1", "test_accuracy", "valid_weighted_f1", "optimistic_test_weighted_f1"):
        values = np.array([r[key] for r in results], dtype=float)  # a null score (no test labels) is NaN
        std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")  # one seed has no spread
        summary[key] = {"mean": float(values.mean()), "std": std, "values": values.tolist()}
        print(f"{key:>30}: {values.mean():.2f} ± {std:.2f} over seeds {seed_list}")
    write_json(os.path.join(config["out_dir"], config["run_name"], "summary.json"), summary)


def run_stopping_cleanly(config, feature_set):
    """run(), with Ctrl-C, a non-finite loss and a failed write turned into one short message and exit status."""
    try:
        return run(config, feature_set)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {saved_note(run_directory(config))}", file=sys.stderr)
        raise SystemExit(130) from None
    except (NonFiniteLoss, ValueError) as error:  # ValueError: DataError, a checkpoint to resume that does not fit
        raise SystemExit(f"error: {error}") from None
    except OSError as error:  # OutputError: a full disk, a directory that became read-only
        raise SystemExit(f"error: {error}. Stopped; {saved_note(run_directory(config))}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
