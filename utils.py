"""What several files of this repository need: seeding, metrics and checkpoint io. It imports no other file of the repository."""

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
