"""Prediction with a trained checkpoint: the class of every utterance of a feature file, with its
probability, as a table (predict) or a CSV file (write_predictions, what
`python train_MALN.py --predict=CHECKPOINT --features=FILE` runs). The checkpoint is one that
train_MALN.py wrote, or the release's model converted by --from_release (release.py)."""

import os
from dataclasses import replace

import pandas as pd
import torch

from training.configurator import check_saved_config
from dataloader import DataError, check_dialogue_lengths, collate, load_dataset, selection_splits, to_device
from MALN_model_fix import MALN
from maln.files import atomic_write, check_checkpoint, check_output_path
from utils import resolve_device


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
    check_modalities(model, config, given)
    splits = checkpoint_splits(model.checkpoint, config, given)
    feature_set = load_dataset(config["dataset"], features=config["features"], av_features=config["av_features"],
                               modalities="".join(model.config.modalities), valid_fraction=splits["valid_fraction"],
                               split_seed=splits["split_seed"], trust_pickle=config["trust_pickle"],
                               demo_seed=config["demo_seed"], demo_common=config["demo_common"])
    feature_set = selection_splits(feature_set, splits["select_on"])
    feature_set = mapped_classes(feature_set, model.checkpoint["class_names"], config, given)
    table = predict(model, feature_set, config["predict_split"], config["batch_size"])
    atomic_write(path, lambda temporary: spreadsheet_safe(table).to_csv(temporary, index=False))
    labelled = table[table["label"] != ""]
    accuracy = f", accuracy {100 * (labelled['prediction'] == labelled['label']).mean():.2f} on them" if len(labelled) else ""
    print(f"wrote {len(table)} predictions to {path} ({len(labelled)} utterances labelled{accuracy})")


def check_modalities(model, config, given):
    """--modalities given with --predict must be the checkpoint's own: a model uses every modality it was
    trained on, so another choice cannot be honoured (and is refused rather than ignored)."""
    own = "".join(model.config.modalities)
    if "modalities" in given and config["modalities"] and sorted(config["modalities"]) != sorted(own):
        raise DataError(f"--modalities={config['modalities']}: {config['predict']} was trained on the modalities {own} and "
                        f"predicts from all of them; leave --modalities out with --predict (or train a model on "
                        f"{config['modalities']})")


def mapped_classes(feature_set, checkpoint_names, config, given):
    """The feature set with its class names as the checkpoint's: a labelled class of the file that the
    checkpoint does not have is refused (predictions would be scored against labels the model can never
    give), unless --class_map=file_name:checkpoint_name,... names the checkpoint class it is."""
    mapping = {}
    for pair in filter(None, (part.strip() for part in config.get("class_map", "").split(","))):
        source, _, target = pair.partition(":")
        if not source or target not in checkpoint_names:
            raise DataError(f"--class_map={config['class_map']}: {pair!r} must be file_class:checkpoint_class, the "
                            f"checkpoint's classes being {', '.join(checkpoint_names)}")
        if source not in feature_set.class_names:
            raise DataError(f"--class_map={config['class_map']}: {feature_set.source} has no class {source!r} (its classes: "
                            f"{', '.join(feature_set.class_names)})")
        mapping[source] = target
    names = [mapping.get(name, name) for name in feature_set.class_names]
    used = {int(k) for split in feature_set.splits.values() for d in split for k in d.labels.tolist() if k >= 0}
    foreign = [names[k] for k in sorted(used) if names[k] not in checkpoint_names]
    if foreign:
        raise DataError(f"{feature_set.source}: its classes {', '.join(foreign[:6])} are not among the checkpoint's "
                        f"({', '.join(checkpoint_names)}): its labels cannot be compared with the predictions. Name the "
                        f"checkpoint class of each with --class_map=file_class:checkpoint_class,...")
    return replace(feature_set, class_names=names) if names != feature_set.class_names else feature_set


def checkpoint_splits(checkpoint, config, given):
    """The HOLD_OUT_SETTINGS the checkpoint was trained with (the command line's where it saved none);
    one given on the command line with another value is refused."""
    saved = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    splits = {name: saved.get(name, config[name]) for name in HOLD_OUT_SETTINGS}
    try:  # a file's settings meet the command line's rules, named by the file
        check_saved_config({name: saved[name] for name in HOLD_OUT_SETTINGS if name in saved}, config["predict"], config)
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
