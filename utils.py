"""What several files of this repository need: seeding, metrics, checkpoint io and safe output
paths. It imports no other file of the repository."""

import glob
import json
import math
import os
import random
import tempfile
import zipfile

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


class OutputError(OSError):
    """An output that cannot or must not be written where asked; the message names the path."""


def check_output_path(path, option, inputs=()):
    """Refuse, naming both paths, an output that is one of the command's inputs or an existing file
    (another command wrote it), and one whose place is not a writable directory."""
    for given in inputs:
        if given and os.path.exists(given) and os.path.exists(path) and os.path.samefile(given, path):
            raise OutputError(f"{option}={path} is also an input of this command ({given}); writing it would replace "
                              f"that input: choose another {option}")
    if os.path.isdir(path):
        raise OutputError(f"{option}={path} is a directory; give the path of a file to write")
    if os.path.lexists(path):
        raise OutputError(f"{option}={path} exists; it is not overwritten: remove it or choose another {option}")
    check_writable_place(os.path.dirname(os.path.abspath(path)), option)


def check_writable_place(directory, option):
    """The directory, or the nearest of its parents that exists (the rest would be created), is a writable directory."""
    existing = directory
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputError(f"{option}: {existing} is a file, not a directory, so nothing can be written under it")
    if not os.access(existing, os.W_OK):
        raise OutputError(f"{option}: {existing} is not writable")


TEMPORARY_PREFIX = ".tmp-"


def atomic_write(path, write):
    """Call write(temporary_path), then rename it onto `path`: a reader never sees a half-written
    file, and no temporary file stays behind, whatever stops the write (a full disk, Ctrl-C).
    A failure to write is one OutputError naming the path."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = None
    try:
        os.makedirs(directory, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=TEMPORARY_PREFIX, suffix=os.path.basename(path))
        os.close(handle)
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)


def remove_stale_temporaries(directory):
    """Delete the temporary files a killed process left in a directory that only this run writes."""
    for path in glob.glob(os.path.join(glob.escape(directory), TEMPORARY_PREFIX + "*")):
        os.remove(path)


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


def save_checkpoint(checkpoint, path):
    def write(temporary):
        with open(temporary, "wb") as f:  # a file object: a full disk is an OSError (a path gives a RuntimeError)
            torch.save(checkpoint, f)
    atomic_write(path, write)


EXPANSION_FACTOR = 16                 # a file may expand to at most this many bytes per byte on disk ...
EXPANSION_FLOOR = 256 * 2 ** 20       # ... or this many, for small files (the files of this repository expand to about their size)


def expansion_budget(n_bytes):
    """Bytes a file of n_bytes may expand to once read."""
    return max(EXPANSION_FLOOR, EXPANSION_FACTOR * n_bytes)


def size_text(n_bytes):
    return f"{n_bytes / 2 ** 30:,.1f} GiB" if n_bytes >= 2 ** 30 else f"{n_bytes / 2 ** 20:.2f} MiB"


def load_checkpoint(path, map_location="cpu"):
    """A checkpoint dict, loaded without running any code stored in the file; the fields it has are checked."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    check_checkpoint_size(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        detail = str(error).split("WeightsUnpickler error:")[-1].strip().splitlines()  # torch's own advice is many lines
        raise ValueError(f"{path}: not a MALN checkpoint that loads safely ({type(error).__name__}: "
                         f"{detail[0] if detail else ''})") from None
    check_checkpoint(checkpoint, path)
    return checkpoint


def check_checkpoint_size(path):
    """A checkpoint is a zip archive (what torch.save writes) whose entries expand to at most
    expansion_budget(its size): torch would allocate them before reading (a compressed entry,
    or the legacy format's claimed storage sizes)."""
    on_disk = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as archive:
            claimed = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path}: not a MALN checkpoint that loads safely (not a zip archive as torch.save writes: "
                         f"{error})") from None
    if claimed > expansion_budget(on_disk):
        raise ValueError(f"{path}: its entries expand to {size_text(claimed)} from {size_text(on_disk)} on disk (at most "
                         f"{size_text(expansion_budget(on_disk))} allowed); refused before loading it")


def _is_int(value, low=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


CHECKPOINT_FIELDS = {  # field -> (what it must be, test); train_MALN.py writes best.pt with the first five, last.pt with all
    "model": ("a dict of tensors", lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, torch.Tensor)
                                                                        for k, x in v.items())),
    "model_args": ("a dict of model settings", lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v)),
    "class_names": ("a non-empty list of class-name strings", lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                    and all(isinstance(c, str) for c in v)),
    "config": ("a dict of hyperparameters", lambda v: isinstance(v, dict)),
    "epoch": ("an epoch number", lambda v: _is_int(v)),
    "optimizer": ("an optimizer state", lambda v: isinstance(v, dict) and {"state", "param_groups"} <= set(v)),
    "history": ("a list of epoch rows", lambda v: isinstance(v, list) and all(isinstance(row, dict) for row in v)),
    "best": ("the best epoch's row", lambda v: isinstance(v, dict) and _is_int(v.get("epoch"), 1)),
    "rng": ("the random-number states", lambda v: isinstance(v, dict) and isinstance(v.get("torch"), torch.Tensor)
            and isinstance(v.get("generator"), torch.Tensor)),
    "averaged": ("a moving average's dict of tensors", lambda v: CHECKPOINT_FIELDS["model"][1](v)),  # with --average_decay
}
LAST_CHECKPOINT_FIELDS = tuple(name for name in CHECKPOINT_FIELDS if name != "averaged")


def check_checkpoint(checkpoint, path, required=()):
    """Every field of CHECKPOINT_FIELDS the checkpoint has is of its kind, and agrees with the others;
    the `required` ones are present. One ValueError naming the file and the field otherwise."""
    if not isinstance(checkpoint, dict):
        if required:
            raise ValueError(f"{path}: not a checkpoint saved by train_MALN.py (a {type(checkpoint).__name__}, not a dict)")
        return
    missing = [name for name in required if name not in checkpoint]
    if missing:
        raise ValueError(f"{path}: not a checkpoint of the kind needed here: it has no {', '.join(missing)}"
                         + (" (best.pt has no optimizer state; --resume reads last.pt)" if "optimizer" in missing else ""))
    for name, (kind, valid) in CHECKPOINT_FIELDS.items():
        if name in checkpoint and not valid(checkpoint[name]):
            raise ValueError(f"{path}: field '{name}' must be {kind}, got {type(checkpoint[name]).__name__} "
                             f"{str(checkpoint[name])[:60]!r}")
    n_classes = checkpoint.get("model_args", {}).get("n_classes")
    if "class_names" in checkpoint and n_classes is not None and len(checkpoint["class_names"]) != n_classes:
        raise ValueError(f"{path}: field 'class_names' names {len(checkpoint['class_names'])} classes, the model has {n_classes}")
    if "history" in checkpoint and "epoch" in checkpoint and len(checkpoint["history"]) != checkpoint["epoch"]:
        raise ValueError(f"{path}: field 'history' holds {len(checkpoint['history'])} epochs, field 'epoch' says {checkpoint['epoch']}")
    if "best" in checkpoint and "epoch" in checkpoint and checkpoint["best"]["epoch"] > checkpoint["epoch"]:
        raise ValueError(f"{path}: its best epoch {checkpoint['best']['epoch']} is after its last epoch {checkpoint['epoch']}")


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
