"""What several files of this repository need: seeding, threads, the device and its autocast, the
scores (accuracy, weighted-F1), the logistic-regression fit every run prints a line of, and JSON
output. File and checkpoint safety is in maln/files.py."""

import json
import math
import random
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from maln.files import atomic_write


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(count):
    """torch's cpu thread count (--threads); 0 leaves torch's default (every core)."""
    if count:
        torch.set_num_threads(count)


def resolve_device(name):
    """The torch.device of a --device value: 'auto' is cuda when available, else cpu; one line (ValueError)
    for a name torch does not know or a cuda device this machine does not have."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device={name}: not a device name ('auto', 'cpu', 'cuda', 'cuda:N', 'mps')") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"--device={name}: this machine has {torch.cuda.device_count()} cuda device(s)"
                         + ("" if torch.cuda.is_available() else " (torch sees no cuda); use --device=cpu or auto"))
    return device


def autocast(device, enabled=True):
    """bfloat16 autocast on cuda when enabled; nothing elsewhere."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def scores(labels, predictions):
    """Accuracy and weighted-F1 in percent over the labelled utterances given."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if len(labels) == 0:
        return {"accuracy": float("nan"), "weighted_f1": float("nan")}
    return {"accuracy": 100 * float(accuracy_score(labels, predictions)),  # python floats: weights_only checkpoints hold them
            "weighted_f1": 100 * float(f1_score(labels, predictions, average="weighted", zero_division=0))}


def fit_logistic_regression(x, y, max_iterations=2000):
    """Logistic regression on standardised inputs, fitted on (x, y): the linear line every run prints and the
    probes and baselines use. One stopped at max_iterations is still a fit (no warning)."""
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iterations))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x, y)
    return classifier


def write_json(path, data):
    """JSON has no NaN: a NaN or inf score (a split without labels) is written as null."""
    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(finite_or_none(data), f, indent=2, allow_nan=False)
    atomic_write(path, write)


def finite_or_none(data):
    if isinstance(data, dict):
        return {k: finite_or_none(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_none(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


