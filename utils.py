"""What several files of this repository need: seeding, metrics, and checkpoint io."""

import json
import os
import random
import tempfile

import numpy as np
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
    return {"accuracy": 100 * accuracy_score(labels, predictions),
            "weighted_f1": 100 * f1_score(labels, predictions, average="weighted", zero_division=0)}


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
