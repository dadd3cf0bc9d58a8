"""Files this repository reads and writes, made safe: output paths that never replace an input or a
finished file, atomic writes, regular-file and size checks, and checkpoints loaded without running
code (torch's weights_only), their claimed sizes bounded before anything is allocated, their fields
and tensor shapes checked. It imports no file of the top level."""

import glob
import os
import stat
import tempfile
import zipfile

import torch


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
    """A checkpoint dict, loaded without running any code stored in the file; the sizes its tensors
    claim and the fields it has are checked."""
    check_regular_file(path, "checkpoint")
    check_checkpoint_size(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a MALN checkpoint that loads safely ({type(error).__name__}: "
                         f"{refusal_reason(error)})") from None
    check_tensor_claims(checkpoint, path, expansion_budget(os.path.getsize(path)))
    check_checkpoint(checkpoint, path)
    return checkpoint


def refusal_reason(error):
    """The line of torch's load error that says what is wrong with the file, without its advice to load
    the file unsafely (weights_only=False), which this repository never does."""
    lines = [line.strip() for line in str(error).split("WeightsUnpickler error:")[-1].splitlines() if line.strip()]
    reasons = [line for line in lines if "weights_only" not in line and not line.startswith("Check the documentation")]
    return (reasons or lines or [""])[0]


def check_regular_file(path, what):
    """`path` is an existing regular file (after symbolic links): a directory, a FIFO (reading one
    blocks until something writes to it), a device such as /dev/zero (endless) or a socket is
    refused with one ValueError naming it; a missing file is a FileNotFoundError."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: is {file_kind(mode)}, not {'an' if what[0] in 'aeiou.' else 'a'} {what}")


def file_kind(mode):
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "no regular file")


def check_tensor_claims(value, path, budget, where=""):
    """Every tensor in a loaded checkpoint is dense and claims (its shape and strides) at most the
    bytes its storage holds, and all of them together at most `budget` bytes: a tensor of stride 0
    can claim terabytes on 16 bytes, which the first copy would allocate. -> bytes claimed."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            raise ValueError(f"{path}: the tensor {where or '(top level)'} is {value.layout}, not a dense tensor")
        claimed = value.numel() * value.element_size()
        held = value.untyped_storage().nbytes() - value.storage_offset() * value.element_size() if value.numel() else 0
        if claimed > held:
            raise ValueError(f"{path}: the tensor {where} claims shape {tuple(value.shape)} and strides {value.stride()} "
                             f"({size_text(claimed)}) on a storage of {size_text(max(held, 0))}; refused before using it")
        return claimed
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    total = 0
    for key, child in children:
        total += check_tensor_claims(child, path, budget - total, f"{where}/{key}" if where else str(key))
        if total > budget:
            raise ValueError(f"{path}: its tensors claim more than {size_text(budget)} in all (the most a file of "
                             f"{size_text(os.path.getsize(path))} may expand to); refused before using them")
    return total


def check_checkpoint_size(path):
    """A checkpoint is a zip archive (what torch.save writes) whose entries expand to at most
    expansion_budget(its size): torch would allocate them before reading (a compressed entry,
    or the legacy format's claimed storage sizes)."""
    check_archive_size(path, "a MALN checkpoint that loads safely (not a zip archive as torch.save writes)")


def check_archive_size(path, kind):
    """A zip archive (a checkpoint, an .npz) whose entries expand to at most expansion_budget(its size);
    `kind` opens the message for a file that is no zip archive."""
    on_disk = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as archive:
            claimed = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path}: not {kind} ({error})") from None
    if claimed > expansion_budget(on_disk):
        raise ValueError(f"{path}: its entries expand to {size_text(claimed)} from {size_text(on_disk)} on disk (at most "
                         f"{size_text(expansion_budget(on_disk))} allowed); refused before loading it")


def check_no_symlink(path, option):
    """An output directory that a run folder holds is no symbolic link (writing there would change the
    files it points to, anywhere) and, where it exists, a writable directory."""
    if os.path.islink(path):
        raise OutputError(f"{option}: {path} is a symbolic link (to {os.readlink(path)}); nothing is written through it: "
                          f"remove the link")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{option}: {path} is a file, not a directory, so nothing can be written under it")
    check_writable_place(path, option)


def _is_int(value, low=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


EPOCH_ROW_KEYS = ("epoch", "seconds", "train_loss", *(f"{split}_{name}" for split in ("train", "valid", "test")
                                                      for name in ("nll", "accuracy", "weighted_f1")))  # a row of history.csv


def _is_epoch_row(row):
    return (isinstance(row, dict) and _is_int(row.get("epoch"), 1)
            and all(isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool) for key in EPOCH_ROW_KEYS))


CHECKPOINT_FIELDS = {  # field -> (what it must be, test); train_MALN.py writes best.pt with the first five, last.pt with all
    "model": ("a dict of tensors", lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, torch.Tensor)
                                                                        for k, x in v.items())),
    "model_args": ("a dict of model settings", lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v)),
    "class_names": ("a non-empty list of class-name strings", lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                    and all(isinstance(c, str) for c in v)),
    "config": ("a dict of hyperparameters", lambda v: isinstance(v, dict)),
    "epoch": ("an epoch number", lambda v: _is_int(v)),
    "optimizer": ("an optimizer state", lambda v: isinstance(v, dict) and {"state", "param_groups"} <= set(v)),
    "history": (f"a list of epoch rows, each with the numbers {', '.join(EPOCH_ROW_KEYS)}",
                lambda v: isinstance(v, list) and all(_is_epoch_row(row) for row in v)),
    "best": (f"the best epoch's row, with the numbers {', '.join(EPOCH_ROW_KEYS)}", lambda v: _is_epoch_row(v)),
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
    if "class_names" in checkpoint and len(set(checkpoint["class_names"])) != len(checkpoint["class_names"]):
        raise ValueError(f"{path}: field 'class_names' repeats a class: {list(checkpoint['class_names'])[:12]}")
    n_classes = checkpoint.get("model_args", {}).get("n_classes")
    if "class_names" in checkpoint and n_classes is not None and len(checkpoint["class_names"]) != n_classes:
        raise ValueError(f"{path}: field 'class_names' names {len(checkpoint['class_names'])} classes, the model has {n_classes}")
    if "history" in checkpoint and "epoch" in checkpoint and len(checkpoint["history"]) != checkpoint["epoch"]:
        raise ValueError(f"{path}: field 'history' holds {len(checkpoint['history'])} epochs, field 'epoch' says {checkpoint['epoch']}")
    if "history" in checkpoint and [row["epoch"] for row in checkpoint["history"]] != list(range(1, len(checkpoint["history"]) + 1)):
        raise ValueError(f"{path}: field 'history' does not hold the epochs 1, 2, ... in order")
    if "best" in checkpoint and "epoch" in checkpoint and checkpoint["best"]["epoch"] > checkpoint["epoch"]:
        raise ValueError(f"{path}: its best epoch {checkpoint['best']['epoch']} is after its last epoch {checkpoint['epoch']}")


def load_model_state(model, state, source):
    """model.load_state_dict(state), or one message that says how the checkpoint differs or that its weights are not finite."""
    check_state_shapes(model, state, source)
    check_finite(state, source, "weights")
    model.load_state_dict(state)


def check_state_shapes(model, state, source):
    """The state dict has exactly the model's entries, each of its shape; one message listing the differences otherwise.
    The model may live on the meta device (shapes without memory)."""
    own = model.state_dict()
    differences = [f"{k} is missing" for k in own if k not in state]
    differences += [f"{k} is not in this model" for k in state if k not in own]
    differences += [f"{k} is {tuple(state[k].shape)}, this model's is {tuple(v.shape)}"
                    for k, v in own.items() if k in state and state[k].shape != v.shape]
    if differences:
        raise ValueError(f"{source}: saved by a model of other settings or feature sizes; {len(differences)} "
                         f"difference(s): " + "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else ""))


def check_finite(tensors, source, what):
    """Every floating-point tensor of the dict {name: tensor} is finite: a model of NaN weights predicts one
    class for everything, and an optimizer moment of NaN makes every later step NaN."""
    bad = [name for name, x in tensors.items() if x.is_floating_point() and not bool(torch.isfinite(x).all())]
    if bad:
        raise ValueError(f"{source}: its {what} hold NaN or inf ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                         f"refused, as nothing computed from them could be right")




def on_meta_device(model_class, config):
    """model_class(config) built on the meta device: its sizes only, nothing allocated."""
    with torch.device("meta"):
        return model_class(config)


def fitted_config(checkpoint, path, config_class, model_class):
    """The config_class of a loaded checkpoint's model_args, checked by its rules, whose model
    (model_class) fits the checkpoint's tensors: it is built on the meta device first (sizes only,
    nothing allocated), as model_args may claim a model far larger than the file holds."""
    if not isinstance(checkpoint, dict) or not {"model", "model_args"} <= set(checkpoint):
        raise ValueError(f"{path}: not a checkpoint saved by train_MALN.py (it needs 'model' and 'model_args')")
    if not isinstance(checkpoint["model_args"], dict):
        raise ValueError(f"{path}: field 'model_args' is a {type(checkpoint['model_args']).__name__}, not a dict")
    unknown = set(checkpoint["model_args"]) - set(config_class.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{path}: saved with settings this {config_class.__name__} does not have: {', '.join(sorted(map(str, unknown)))}")
    try:
        config = config_class(**checkpoint["model_args"])
        skeleton = on_meta_device(model_class, config)
    except (ValueError, TypeError) as error:  # a setting out of its rules, heads that do not divide a size
        raise ValueError(f"{path}: field 'model_args': {error}") from None
    check_state_shapes(skeleton, checkpoint["model"], path)
    return config
