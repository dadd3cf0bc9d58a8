"""What several files of this repository need: seeding, metrics, checkpoint io, and predictions."""

import json
import os
import random
import tempfile

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def scores(labels, predictions):
    """Accuracy and weighted-F1 in percent over the labelled utterances given."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if len(labels) == 0:
        return {"accuracy": float("nan"), "weighted_f1": float("nan")}
    return {"accuracy": 100 * float(accuracy_score(labels, predictions)),  # python floats: weights_only checkpoints hold them
            "weighted_f1": 100 * float(f1_score(labels, predictions, average="weighted", zero_division=0))}


def atomic_write(path, write):
    """Call write(temporary_path), then rename it onto `path`: a reader never sees a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_json(path, data):
    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(data, f, indent=2)
    atomic_write(path, write)


def save_checkpoint(checkpoint, path):
    atomic_write(path, lambda temporary: torch.save(checkpoint, temporary))


def load_checkpoint(path, map_location="cpu"):
    """A checkpoint dict, loaded without running any code stored in the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a MALN checkpoint that loads safely ({type(error).__name__}: {error})") from None


def load_model_state(model, state, source):
    """model.load_state_dict(state), or one message that says how the checkpoint differs."""
    own = model.state_dict()
    differences = [f"{k} is missing" for k in own if k not in state]
    differences += [f"{k} is not in this model" for k in state if k not in own]
    differences += [f"{k} is {tuple(state[k].shape)}, this model's is {tuple(v.shape)}"
                    for k, v in own.items() if k in state and state[k].shape != v.shape]
    if differences:
        raise ValueError(f"{source}: saved by a model of other settings or feature sizes; {len(differences)} "
                         f"difference(s): " + "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else ""))
    model.load_state_dict(state)


@torch.no_grad()
def predict(model, feature_set, split="", batch_size=32):
    """A table with one row per utterance of `split` (every split when empty): split, dialogue_id,
    position, speaker, the predicted class, its probability, and the gold label ('' where
    unlabelled). `model` comes from MALN.from_checkpoint, whose checkpoint names the classes;
    the feature set must have the checkpoint's modalities and feature sizes."""
    from dataloader import DataError, collate, to_device  # here, not at the top: dataloader imports utils
    needed, given = model.config.feature_sizes, feature_set.feature_sizes
    if any(given.get(m) != size for m, size in needed.items()):
        raise DataError(f"{feature_set.source}: its feature sizes {given} do not fit the checkpoint's {needed}")
    if split not in ("", *feature_set.splits):
        raise ValueError(f"the split to predict is one of {', '.join(feature_set.splits)}, or empty for all; got {split!r}")
    chosen = [(name, d) for name, dialogues in feature_set.splits.items() if split in ("", name) for d in dialogues]
    if not chosen:
        raise DataError(f"{feature_set.source}: no {split} dialogue to predict")
    model.eval()
    device = next(model.parameters()).device
    tables = []
    for start in range(0, len(chosen), batch_size):
        group = chosen[start:start + batch_size]
        batch = to_device(collate([d for _, d in group]), device)
        log_probs = model(batch["features"], batch["speakers"], batch["utterance_mask"], batch["lengths"])["log_probs"]
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
