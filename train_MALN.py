"""
Train and evaluate MALN on IEMOCAP, MELD, any feature file of a known layout, or the built-in
demo set. Every hyperparameter below can be overridden on the command line:

    python train_MALN.py --dataset=demo
    python train_MALN.py --features=Features/iemocap_features_roberta.pkl --av_features=Features/IEMOCAP_features_raw.pkl
    python train_MALN.py --dataset=IEMOCAP --modalities=t --seeds=1,2,3

The epoch is selected on validation weighted-F1 and test is reported at that epoch; the
release's optimistic figure (best test epoch) is printed too, labelled as such.
"""

import copy
import os
import sys
import time
from dataclasses import fields

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import classification_report, confusion_matrix
from tqdm import tqdm

from dataloader import DataError, collate, load_dataset, to_device
from MALN_model_fix import MALN, MALNConfig
from utils import atomic_write, save_checkpoint, scores, set_seed, write_json

# ----------------------------------------------------------------------------- hyperparameters
# data
dataset = "demo"            # 'IEMOCAP', 'MELD' or 'demo' (built in, nothing to download): label set and default files
features = ""               # feature file of any known layout; empty = the dataset's default under Features/
av_features = ""            # DialogueRNN / MMGCN file whose audio and visual join a COSMIC text file by dialogue id
modalities = ""             # any non-empty subset of 'tav'; empty = every modality the files provide
valid_fraction = 0.1        # share of training dialogues held out when the file has no validation ids
split_seed = 100            # seed of that held-out share (the same for every training seed)
demo_seed = 0               # seed of the generated demo data set
trust_pickle = False        # load feature pickles without the restricted unpickler (only for files you trust)
# model: SCLM
sclm_mode = "speaker"       # 'speaker' (per-party, the paper), 'release' (two whole-dialogue Transformers), 'off'
sclm_layers = 1             # Transformer layers of SCLM
sclm_heads = 1              # attention heads of SCLM
sclm_feedforward = 128      # feed-forward size of SCLM
sclm_dropout = 0.1          # dropout inside SCLM
speaker_size = 100          # projected speaker-characteristic vector
# model: context encoders
gru_layers = 2              # bidirectional GRU layers
context_hidden = 0          # GRU hidden size; 0 = the modality's feature size (released)
# model: AMDM
hidden_size = 100           # specific and common vector size
specific_dropout = 0.1      # dropout of the specific encoders
common_dropout = 0.3        # dropout of the common encoders
discriminator_hidden = 50   # hidden size of the modality discriminator
discriminator_dropout = 0.1 # dropout of the modality discriminator
gradient_reversal = 1.0     # lambda of the gradient reversal layer
adversarial = True          # modality-discriminator losses
orthogonality = True        # orthogonality (difference) losses
cross_attention = True      # cross-modal attention (False: plain concatenation)
cross_input = "common"      # vectors fed to cross-modal attention: 'common' (release) or 'specific' (paper's wording)
cross_heads = 4             # heads of the cross-modal attention
cross_feedforward = 200     # feed-forward size after the cross-modal attention
dropout = 0.66              # classifier, context-encoder and cross-attention dropout
# loss
unimodal_weight = 0.1       # weight of the unimodal auxiliary classification losses
adversarial_weight = 0.01   # weight of the adversarial losses
orthogonality_weight = 5e-6 # weight of the orthogonality losses
class_weights = False       # weight the classification losses by inverse class frequency in train
# training
epochs = 60                 # training epochs
batch_size = 32             # dialogues per batch
bucket_batches = False      # training batches of similar-length dialogues (shuffled, sorted within pools of 4 batches)
learning_rate = 4e-4        # Adam learning rate
weight_decay = 3e-5         # Adam weight decay
seed = 100                  # training seed
seeds = ""                  # several seeds, e.g. '1,2,3': one run each, then mean and std
device = "auto"             # 'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...
amp = False                 # bfloat16 autocast on cuda
# output
out_dir = "saved_models"    # runs are written to out_dir/run_name
run_name = ""               # empty = <dataset>_<modalities>_<date-time>
export_features = True      # write fused, common and specific vectors of the selected epoch as .npz
# the demo set is small and synthetic: it gets its own schedule unless the command line says otherwise
demo_settings = {"learning_rate": 1e-3, "batch_size": 16, "epochs": 25}
# -----------------------------------------------------------------------------
HYPERPARAMETERS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}
MODEL_KEYS = [f.name for f in fields(MALNConfig) if f.name not in ("feature_sizes", "n_classes", "max_positions")]


def parse_overrides(argv, defaults=HYPERPARAMETERS):
    """--name=value pairs onto a copy of the defaults, each converted to its default's type;
    the demo set's own schedule applies to what the command line leaves unset."""
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
    if config.get("dataset") == "demo" and not config["features"]:
        config.update({k: v for k, v in demo_settings.items() if k not in given})
    return config


def build_model(feature_set, config):
    model_args = {k: config[k] for k in MODEL_KEYS}
    model_args.update(feature_sizes=feature_set.feature_sizes, n_classes=len(feature_set.class_names),
                      max_positions=max(128, feature_set.max_length + 1))
    return MALN(MALNConfig(**model_args))


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


def make_optimizer(model, config):
    """Adam with the released settings; fused: the same update in one kernel (about 10x faster on cpu)."""
    return torch.optim.Adam(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"], fused=True)


def autocast(device, enabled):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def train_epoch(model, optimizer, batches, device, amp, class_weights):
    """One pass of the released objective over the training batches; returns mean loss and scores."""
    model.train()
    total, labels, predictions = [], [], []
    for _, batch in tqdm(batches, desc="train", leave=False, disable=None):
        batch = to_device(batch, device)
        with autocast(device, amp):
            output = model(batch["features"], batch["speakers"], batch["utterance_mask"], batch["lengths"],
                           batch["labels"], class_weights)
        loss = output["losses"]["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total.append(loss.detach())
        labels.append(batch["labels"].reshape(-1))
        predictions.append(output["log_probs"].detach().argmax(-1).reshape(-1))
    return summarise(torch.stack(total).mean(), labels, predictions)


def summarise(loss, labels, predictions):
    labels, predictions = torch.cat(labels).cpu().numpy(), torch.cat(predictions).cpu().numpy()
    labelled = labels >= 0
    return {"loss": float(loss), **scores(labels[labelled], predictions[labelled])}


@torch.no_grad()
def evaluate(model, batches, device, amp, class_weights, keep_vectors=False):
    """Loss and scores over the batches; with keep_vectors, also every real utterance's
    fused, common and specific vectors, dialogue id, position, label and prediction."""
    model.eval()
    total, labels, predictions, vectors = [], [], [], []
    for dialogues, batch in batches:
        batch = to_device(batch, device)
        with autocast(device, amp):
            output = model(batch["features"], batch["speakers"], batch["utterance_mask"], batch["lengths"],
                           batch["labels"], class_weights)
        total.append(output["losses"]["total"].float() * batch["utterance_mask"].sum())
        labels.append(batch["labels"].reshape(-1))
        predictions.append(output["log_probs"].argmax(-1).reshape(-1))
        if keep_vectors:
            vectors.append(real_utterance_vectors(dialogues, batch, output))
    n_utterances = sum(int(b["lengths"].sum()) for _, b in batches)
    result = summarise(torch.stack(total).sum() / n_utterances, labels, predictions)
    real = torch.cat([b["utterance_mask"].reshape(-1) for _, b in batches]).numpy()
    result["labels"] = torch.cat(labels).cpu().numpy()[real]
    result["predictions"] = torch.cat(predictions).cpu().numpy()[real]
    if keep_vectors:
        result["vectors"] = {k: np.concatenate([v[k] for v in vectors]) for k in vectors[0]}
    return result


def real_utterance_vectors(dialogues, batch, output):
    mask = batch["utterance_mask"]
    vectors = {"fused": output["fused"][mask].float().cpu().numpy()}
    for kind in ("common", "specific"):
        for m, x in output[kind].items():
            vectors[f"{kind}_{m}"] = x[mask].float().cpu().numpy()
    vectors["dialogue_id"] = np.array([d.dialogue_id for d in dialogues for _ in range(len(d))])
    vectors["position"] = np.concatenate([np.arange(len(d)) for d in dialogues])
    vectors["label"] = batch["labels"][mask].cpu().numpy()
    vectors["prediction"] = output["log_probs"].argmax(-1)[mask].cpu().numpy()
    return vectors


def inverse_frequency_weights(dialogues, n_classes, device):
    counts = torch.bincount(torch.cat([d.labels[d.labels >= 0] for d in dialogues]), minlength=n_classes).float()
    weights = counts.sum() / (n_classes * counts.clamp(min=1))
    return weights.to(device)


def resolve_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def run(config, feature_set=None):
    """Train one model with config['seed']; select the epoch on validation; save and return the metrics."""
    started = time.time()
    if feature_set is None:
        feature_set = load_dataset(config["dataset"], config["features"], config["av_features"], config["modalities"],
                                   config["valid_fraction"], config["split_seed"], config["trust_pickle"], config["demo_seed"])
    device = resolve_device(config["device"])
    set_seed(config["seed"])
    model = build_model(feature_set, config).to(device)
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(config["seed"])
    weights = inverse_frequency_weights(feature_set.splits["train"], len(feature_set.class_names), device) \
        if config["class_weights"] else None
    eval_batches = {split: make_batches(feature_set.splits[split], config["batch_size"]) for split in ("train", "valid", "test")}
    run_dir = os.path.join(config["out_dir"], config["run_name"])
    os.makedirs(run_dir, exist_ok=True)
    print(f"{feature_set.source} ({feature_set.layout}): modalities {feature_set.modalities} {feature_set.feature_sizes}, "
          f"{len(feature_set.class_names)} classes, dialogues train/valid/test "
          f"{'/'.join(str(len(feature_set.splits[s])) for s in ('train', 'valid', 'test'))}; "
          f"{model.n_parameters() / 1e6:.2f}M parameters on {device}; writing to {run_dir}")

    history, best, best_state = [], None, None
    for epoch in range(1, config["epochs"] + 1):
        epoch_start = time.time()
        train_batches = make_batches(feature_set.splits["train"], config["batch_size"], generator, config["bucket_batches"])
        train = train_epoch(model, optimizer, train_batches, device, config["amp"], weights)
        valid = evaluate(model, eval_batches["valid"], device, config["amp"], weights)
        test = evaluate(model, eval_batches["test"], device, config["amp"], weights)
        row = {"epoch": epoch, "seconds": time.time() - epoch_start}
        for split, result in (("train", train), ("valid", valid), ("test", test)):
            row.update({f"{split}_{k}": result[k] for k in ("loss", "accuracy", "weighted_f1")})
        history.append(row)
        improved = best is None or valid["weighted_f1"] > best["valid_weighted_f1"]
        tqdm.write(f"epoch {epoch:3d} | " + " | ".join(
            f"{s} loss {row[f'{s}_loss']:.3f} acc {row[f'{s}_accuracy']:5.2f} wF1 {row[f'{s}_weighted_f1']:5.2f}"
            for s in ("train", "valid", "test")) + f" | {row['seconds']:.1f}s" + (" *" if improved else ""))
        if improved:
            best, best_state = row, copy.deepcopy(model.state_dict())
            save_checkpoint({"model": best_state, "model_args": model.model_args(), "config": config,
                             "class_names": feature_set.class_names, "epoch": epoch, "metrics": row}, os.path.join(run_dir, "best.pt"))
        atomic_write(os.path.join(run_dir, "history.csv"), lambda path: pd.DataFrame(history).to_csv(path, index=False))

    model.load_state_dict(best_state)
    optimistic = max(history, key=lambda r: r["test_weighted_f1"])
    final = {split: evaluate(model, eval_batches[split], device, config["amp"], weights,
                             keep_vectors=config["export_features"]) for split in ("train", "valid", "test")}
    report(feature_set.class_names, final["test"]["labels"], final["test"]["predictions"])
    metrics = {
        "source": feature_set.source, "layout": feature_set.layout, "modalities": feature_set.modalities,
        "class_names": feature_set.class_names, "seed": config["seed"], "best_epoch": best["epoch"],
        "valid_weighted_f1": best["valid_weighted_f1"], "valid_accuracy": best["valid_accuracy"],
        "test_weighted_f1": final["test"]["weighted_f1"], "test_accuracy": final["test"]["accuracy"],
        "optimistic_best_test_epoch": optimistic["epoch"], "optimistic_test_weighted_f1": optimistic["test_weighted_f1"],
        "optimistic_test_accuracy": optimistic["test_accuracy"], "parameters": model.n_parameters(),
        "seconds_per_epoch": float(np.mean([r["seconds"] for r in history])), "seconds": time.time() - started,
        "config": config, **feature_set.info,
    }
    write_json(os.path.join(run_dir, "metrics.json"), metrics)
    if config["export_features"]:
        for split, result in final.items():
            atomic_write(os.path.join(run_dir, f"features_{split}.npz"), lambda path: np.savez(path, **result["vectors"]))
    print(f"selected epoch {best['epoch']} on validation weighted-F1 {best['valid_weighted_f1']:.2f}: "
          f"test weighted-F1 {metrics['test_weighted_f1']:.2f}, accuracy {metrics['test_accuracy']:.2f}")
    print(f"[optimistic, the release's protocol] best test epoch {optimistic['epoch']}: "
          f"test weighted-F1 {optimistic['test_weighted_f1']:.2f}, accuracy {optimistic['test_accuracy']:.2f}")
    return metrics


def report(names, labels, predictions):
    """Classification report and confusion matrix, with class names, over labelled utterances."""
    labelled = labels >= 0
    print(classification_report(labels[labelled], predictions[labelled], labels=range(len(names)), target_names=names,
                                digits=4, zero_division=0))
    matrix = confusion_matrix(labels[labelled], predictions[labelled], labels=range(len(names)))
    print("confusion matrix (rows: true, columns: predicted)")
    print(pd.DataFrame(matrix, index=names, columns=names).to_string())


def main(argv):
    config = parse_overrides(argv)
    if not config["run_name"]:
        config["run_name"] = f"{config['dataset']}_{config['modalities'] or 'all'}_{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        feature_set = load_dataset(config["dataset"], config["features"], config["av_features"], config["modalities"],
                                   config["valid_fraction"], config["split_seed"], config["trust_pickle"], config["demo_seed"])
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    seed_list = [int(s) for s in config["seeds"].split(",") if s.strip()] if config["seeds"] else [config["seed"]]
    if len(seed_list) == 1:
        run({**config, "seed": seed_list[0]}, feature_set)
        return
    results = [run({**config, "seed": s, "run_name": os.path.join(config["run_name"], f"seed{s}")}, feature_set) for s in seed_list]
    summary = {"seeds": seed_list, "config": config}
    for key in ("test_weighted_f1", "test_accuracy", "valid_weighted_f1", "optimistic_test_weighted_f1"):
        values = np.array([r[key] for r in results])
        summary[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)), "values": values.tolist()}
        print(f"{key:>30}: {values.mean():.2f} ± {values.std(ddof=1):.2f} over seeds {seed_list}")
    write_json(os.path.join(config["out_dir"], config["run_name"], "summary.json"), summary)


if __name__ == "__main__":
    main(sys.argv[1:])
