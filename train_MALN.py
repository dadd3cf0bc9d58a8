"""
Train and evaluate MALN on IEMOCAP, MELD, any feature file of a known layout, or the built-in
demo set. Every setting below can be overridden on the command line:

    python train_MALN.py --dataset=demo
    python train_MALN.py --features=Features/iemocap_features_roberta.pkl --av_features=Features/IEMOCAP_features_raw.pkl
    python train_MALN.py --dataset=IEMOCAP --modalities=t --seeds=1,2,3
    python train_MALN.py --predict=saved_models/RUN/best.pt --features=Features/mydata.pkl
    python train_MALN.py --resume=saved_models/<run>     # continue an interrupted run
    python train_MALN.py --from_release=release.pkl --dataset=IEMOCAP --run_name=release   # the authors' weights

Top to bottom: the settings, the data, the model, one epoch, the run (train, validate, select,
save; the final report) and main. The epoch is selected on validation weighted-F1, and test is
reported at that epoch beside the release's optimistic best test epoch, labelled as such
(--select_on=test runs the release's protocol itself). Elsewhere: checks of the settings
(configurator.py), the run's files (run_files.py), the scores (scoring.py), --predict (predict.py).
"""

import copy
import math
import os
import sys
import time

import torch
from tqdm import tqdm

from training.configurator import MODEL_KEYS, override_lines, parse_settings, resumed_config, seed_list_of
from dataloader import (SPLITS, check_dialogue_lengths, check_training_splits, inverse_frequency_weights, load_dataset,
                        make_batches, selection_splits, to_device)
from MALN_model_fix import MALN, MALNConfig
from training.predict import write_predictions
from training.release import convert_release
from training.run_files import (check_run_name_free, claim_run_directory, export_vectors, non_finite_note,
                                open_run_directory, restore, run_directory, save_best, save_last, saved_note,
                                write_history, write_seed_summary)
from training.scoring import NO_SCORES, EpochTally, epoch_line, epoch_row, print_outcome, report, run_metrics
from utils import autocast, resolve_device, set_seed, set_threads, write_json

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
sclm_fusion = "concat"      # SCLM's vector s and the context vector c: 'concat' [c ; s] (released), 'gate' c * 2 sigmoid(W s),
                            # 'correct' c + W s
max_positions = 0           # rows of SCLM's position table (longest dialogue + 1); 0 = max(128, the longest training
                            # dialogue + 1): never sized from valid or test. A longer valid or test dialogue is refused
# model: context encoders
context_encoder = "gru"     # a name of MALN_model_fix.CONTEXT_ENCODERS: 'gru' (the release's bidirectional GRU over the
                            # dialogue), 'party_gru' (beside it, a GRU along each party's own turns), 'party_mean_gru'
                            # (that party GRU also given its party's mean), 'party_joint_gru' (that party GRU reading
                            # every modality's turn), 'speaker_gru' (the dialogue GRU told each turn's party: a one-hot)
gru_layers = 2              # bidirectional GRU layers
context_hidden = 0          # GRU hidden size; 0 = the modality's feature size (released)
context_dropout = 0.5       # dropout between the GRU layers and on the context encoder's output (released: 0.5)
utterance_skip = False      # the utterance's own features beside its context vector into AMDM (not in the release)
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
party_chain = False         # the classifier's scores smoothed by learned emotion transitions along each party's turns
                            # (forward-backward marginals, MALN_model_fix.PartyChain; not in the release)
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
class_map = ""              # --predict on a file of other class names: file_name:checkpoint_name,... (e.g. joy:hap)
# the authors' trained model as a checkpoint of this repository, instead of training
from_release = ""           # a torch.save file of the release's MALN state dict: written as out_dir/run_name/best.pt
class_names = ""            # its class names in order, comma-separated; empty = the names of --dataset
# machine
threads = 0                 # torch's cpu threads; 0 = torch's default (every core). Runs side by side: cores / runs each
# named settings files over the values above (config/NAME.py; a settings file given as an argument does the same)
preset = ""                 # '' = none; 'demo', 'IEMOCAP', 'MELD' (chosen on validation), 'released' (the authors')
resume = ""                 # run directory of an interrupted run: continue it from its last.pt
# -----------------------------------------------------------------------------
HYPERPARAMETERS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}


def parse_overrides(argv):
    """The settings above, a named settings file's values over them, the command line's over those; all checked."""
    return parse_settings(argv, HYPERPARAMETERS)[0]


# ----------------------------------------------------------------------------- data
def training_data(config, feature_set=None):
    """The run's dialogues: `feature_set`, or the one the data settings name; in the splits of its
    protocol (--select_on), checked for training and against the model's position table (DataError)."""
    if feature_set is None:
        feature_set = load_dataset(config["dataset"], features=config["features"], av_features=config["av_features"],
                                   modalities=config["modalities"], valid_fraction=config["valid_fraction"],
                                   split_seed=config["split_seed"], trust_pickle=config["trust_pickle"],
                                   demo_seed=config["demo_seed"], demo_common=config["demo_common"])
    feature_set = selection_splits(feature_set, config["select_on"])
    check_training_splits(feature_set, config["select_on"])
    check_dialogue_lengths(position_table_size(feature_set, config), config["sclm_mode"],
                           [(split, d) for split, dialogues in feature_set.splits.items() for d in dialogues],
                           feature_set.source, "the model", ", sized from the training split, never from valid or test; "
                                                           "give a larger --max_positions")
    return feature_set


# ----------------------------------------------------------------------------- model
DEFAULT_POSITIONS = 128     # the smallest position table max_positions=0 builds (the release's)


def build_model(feature_set, config):
    """A new MALN of the settings' MODEL_KEYS for this feature set's sizes and classes (the one place the
    script builds its MALNConfig); its position table sized from the training split (or --max_positions),
    never from valid or test; its standardisation and party chain (when on) fitted on the training split."""
    model_args = {k: config[k] for k in MODEL_KEYS}
    model_args.update(feature_sizes=feature_set.feature_sizes, n_classes=len(feature_set.class_names),
                      max_positions=position_table_size(feature_set, config))
    model = MALN(MALNConfig(**model_args))
    if model.config.standardize:
        model.fit_standardizer(feature_set.splits["train"])
    if model.config.party_chain:
        model.fit_chain(feature_set.splits["train"])
    return model


def position_table_size(feature_set, config):
    """--max_positions, or for 0 max(128, the longest training dialogue + 1 for [CLS])."""
    return config["max_positions"] or max(DEFAULT_POSITIONS, max(len(d) for d in feature_set.splits["train"]) + 1)


def make_optimizer(model, config):
    """Adam (learning rate and weight decay from config); fused: the same update in one kernel (about 10x faster on cpu)."""
    return torch.optim.Adam(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"], fused=True)


def moving_average(model, decay):
    """An exponential moving average of model's weights (and buffers), or None when decay is 0."""
    if not decay:
        return None
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay),
                                               use_buffers=True)


# ----------------------------------------------------------------------------- one epoch
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


NON_FINITE_CHECK_EVERY = 16  # training steps between checks of the loss on cuda (and mps), where a check is a host sync


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or inf; nothing of that epoch is saved."""


def train_epoch(model, optimizer, batches, device, amp, class_weights, averaged=None, reversal_factor=1.0):
    """One pass of the released objective over the training batches, updating the moving average
    `averaged` (or None) after every step, with the gradient reversal's lambda times `reversal_factor`; returns the objective's mean over batches ('loss'), the
    fused output's unweighted NLL over the labelled utterances ('nll', dropout on) and scores (EpochTally).
    A NaN or inf loss stops it before that batch's step on cpu, and within NON_FINITE_CHECK_EVERY
    steps elsewhere (each check waits for the device); nothing of the epoch is kept then."""
    model.train()
    check_every = 1 if device.type == "cpu" else NON_FINITE_CHECK_EVERY
    losses, tally = [], EpochTally()
    for step, (_, batch) in enumerate(tqdm(batches, desc="train", leave=False, disable=None), 1):
        batch = to_device(batch, device)
        with autocast(device, amp):
            output = model(batch, class_weights, reversal_factor)
        loss = output["losses"]["total"]
        losses.append(loss.detach())
        if step % check_every == 0 or step == len(batches):
            check_finite_losses(losses, len(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if averaged is not None:
            averaged.update_parameters(model)
        tally.add(batch, output)
    return {"loss": float(torch.stack(losses).mean()), **tally.result()}


def check_finite_losses(losses, n_batches):
    """NonFiniteLoss naming the first of these per-batch training losses that is NaN or inf."""
    losses = torch.stack(losses)                                                  # (steps so far,)
    finite = torch.isfinite(losses)
    if not finite.all():
        index = int((~finite).nonzero()[0])
        raise NonFiniteLoss(f"batch {index + 1} of {n_batches}: the training loss is {losses[index].item()}")


@torch.no_grad()
def evaluate(model, batches, device, amp, class_weights, keep_vectors=False, reversal_factor=1.0):
    """EpochTally's figures over the batches, the model in eval mode: 'nll' (NaN without labels), scores, every real
    utterance's label and prediction, and with keep_vectors its vectors. `class_weights` weigh only the losses."""
    model.eval()
    tally = EpochTally(keep_vectors)
    for dialogues, batch in batches:
        batch = to_device(batch, device)
        with autocast(device, amp):
            output = model(batch, class_weights, reversal_factor)
        tally.add(batch, output, dialogues)
    return tally.result()


# ----------------------------------------------------------------------------- the run
def run(config, feature_set=None, origins=None):
    """Train one model with config['seed']; select the epoch on validation; save and return the metrics.
    `origins`: where each setting that differs from the top of this script came from (parse_settings), recorded in
    metrics.json beside the value; None: config was given to run() directly."""
    started = time.time()
    set_threads(config["threads"])
    feature_set = training_data(config, feature_set)
    if config["cudnn_deterministic"]:  # cuDNN's deterministic algorithms, as the release asks; False leaves the setting
        torch.backends.cudnn.deterministic = True
    device = resolve_device(config["device"])
    set_seed(config["seed"])
    model = build_model(feature_set, config).to(device)
    optimizer = make_optimizer(model, config)
    averaged = moving_average(model, config["average_decay"])
    evaluated = averaged.module if averaged is not None else model   # the weights validated, selected and saved
    generator = torch.Generator().manual_seed(config["seed"])
    weights = inverse_frequency_weights(feature_set.splits["train"], len(feature_set.class_names), device) \
        if config["class_weights"] else None
    eval_batches = {split: make_batches(feature_set.splits[split], config["batch_size"]) for split in SPLITS}
    config = open_run_directory(config)
    run_dir = run_directory(config)
    print(f"{feature_set.summary()}; {model.n_parameters() / 1e6:.2f}M parameters on {device}; writing to {run_dir}")

    history, best, best_state = [], None, None
    if config["resume"]:
        history, best, best_state = restore(run_dir, model, optimizer, generator, device, averaged)
        if best["epoch"] == len(history):  # best.pt may predate this epoch (see save_last)
            save_best(run_dir, best_state, model, config, feature_set, best)
        print(f"resuming after epoch {len(history)} (best so far: epoch {best['epoch']})")
    selected_on = config["select_on"]
    for epoch in range(len(history) + 1, config["epochs"] + 1):
        epoch_start = time.time()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(epoch, config)
        reversal_factor = reversal_factor_at(epoch, config)
        if config["reseed_every_epoch"]:
            set_seed(config["seed"])
            generator.manual_seed(config["seed"])
        train_batches = make_batches(feature_set.splits["train"], config["batch_size"], generator, config["bucket_batches"])
        try:
            train = train_epoch(model, optimizer, train_batches, device, config["amp"], weights, averaged, reversal_factor)
        except NonFiniteLoss as error:
            raise NonFiniteLoss(f"epoch {epoch}, {error}. Stopped; {non_finite_note(run_dir, epoch, config)}") from None
        valid = evaluate(evaluated, eval_batches["valid"], device, config["amp"], weights, reversal_factor=reversal_factor) \
            if eval_batches["valid"] else NO_SCORES  # select_on=test
        test = evaluate(evaluated, eval_batches["test"], device, config["amp"], weights, reversal_factor=reversal_factor)
        row = epoch_row(epoch, time.time() - epoch_start, train, valid, test, config["gradient_reversal"] * reversal_factor)
        history.append(row)
        improved = best is None or row[f"{selected_on}_weighted_f1"] > best[f"{selected_on}_weighted_f1"]
        tqdm.write(epoch_line(row, improved))
        if improved:
            best, best_state = row, copy.deepcopy(evaluated.state_dict())
        save_last(run_dir, model, optimizer, generator, device, config, feature_set, history, best, averaged)
        if improved:
            save_best(run_dir, best_state, model, config, feature_set, best)
        write_history(run_dir, history)

    model.load_state_dict(best_state)  # the final report: the selected epoch's weights on train and test (and valid)
    exported = [split for split in (SPLITS if config["export_features"] else ("train", "test")) if feature_set.splits[split]]
    final = {split: evaluate(model, eval_batches[split], device, config["amp"], weights, keep_vectors=True) for split in exported}
    report(feature_set.class_names, final["test"]["labels"], final["test"]["predictions"])
    metrics = run_metrics(config, feature_set, model, history, best, final, time.time() - started)
    metrics["settings_changed"] = {name: {"value": config[name], "top_of_script": HYPERPARAMETERS[name],
                                          "from": (origins or {}).get(name, "the config given to run()")}
                                   for name in HYPERPARAMETERS if name in config and config[name] != HYPERPARAMETERS[name]}
    if config["export_features"]:
        export_vectors(run_dir, final)
    write_json(os.path.join(run_dir, "metrics.json"), metrics)  # the last output: a run with it has all the others
    print_outcome(best, metrics)
    return metrics


# ----------------------------------------------------------------------------- the commands
def main(argv):
    """The commands of this file's docstring: --from_release, --predict, --resume, or a run of each seed."""
    config, origins = parse_settings(argv, HYPERPARAMETERS)
    given = {argument[2:].split("=", 1)[0] for argument in argv if argument.startswith("--")}
    for line in override_lines(config, origins, HYPERPARAMETERS):
        print(line)
    set_threads(config["threads"])
    if config["from_release"]:
        return one_line_errors(convert_release, config)          # not a release state dict, OutputError
    if config["predict"]:
        return one_line_errors(write_predictions, config, given)  # DataError, a checkpoint that does not load, OutputError
    if config["resume"]:
        if set(origins.values()) - {"the command line"} - {"the top of train_MALN.py"}:
            raise SystemExit("--resume continues a run with its own settings: give no settings file or --preset with it")
        config = resumed_config(config, given, HYPERPARAMETERS)
        origins = {name: "the run resumed" for name in config if config[name] != HYPERPARAMETERS[name]}
        one_line_errors(open_run_directory, config)  # its folder's lock, before the data is loaded: one run at a time
    else:
        one_line_errors(check_run_name_free, config)
    feature_set = one_line_errors(training_data, config)         # DataError
    if not config["resume"]:
        config = one_line_errors(claim_run_directory, config)    # one directory, or the one holding a directory per seed
    seed_list = seed_list_of(config["seeds"]) if config["seeds"] and not config["resume"] else [config["seed"]]
    if len(seed_list) == 1:
        run_configs = [{**config, "seed": seed_list[0]}]
    else:
        run_configs = [{**config, "seed": s, "run_name": os.path.join(config["run_name"], f"seed{s}")} for s in seed_list]
    results = [run_stopping_cleanly(run_config, feature_set, origins) for run_config in run_configs]
    if len(results) > 1:
        write_seed_summary(config, seed_list, results)


def one_line_errors(job, *args):
    """job(*args), a ValueError (DataError, a file that does not load) or OSError (OutputError) as one line 'error: ...'."""
    try:
        return job(*args)
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None


def run_stopping_cleanly(config, feature_set, origins):
    """run(), with Ctrl-C, a non-finite loss and a failed write turned into one short message and exit status."""
    from training.run_files import release_run_locks  # the run's folder lock: held while run() writes there
    try:
        return run(config, feature_set, origins)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {saved_note(run_directory(config))}", file=sys.stderr)
        raise SystemExit(130) from None
    except (NonFiniteLoss, ValueError) as error:  # ValueError: DataError, a checkpoint to resume that does not fit
        raise SystemExit(f"error: {error}") from None
    except OSError as error:  # OutputError: a full disk, a directory that became read-only
        raise SystemExit(f"error: {error}. Stopped; {saved_note(run_directory(config))}") from None
    finally:
        release_run_locks(run_directory(config))


if __name__ == "__main__":
    main(sys.argv[1:])
