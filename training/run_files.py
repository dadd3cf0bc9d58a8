"""A training run's directory, out_dir/run_name: claiming it (never one that exists, so no run
overwrites another), the checkpoints written there each epoch (last.pt for --resume, best.pt for
the selected epoch) and restoring them, reading a finished run's metrics, and the summary over
the runs of several seeds. train_MALN.py writes runs; benchmarks/results.py reads them."""

import atexit
import copy
import fcntl
import itertools
import json
import os
import stat
import time

import numpy as np
import pandas as pd
import torch

from maln.files import (LAST_CHECKPOINT_FIELDS, OutputError, atomic_write, check_checkpoint, check_finite,
                        check_regular_file, check_state_shapes, check_writable_place, load_checkpoint,
                        load_model_state, remove_stale_temporaries, save_checkpoint)
from utils import write_json


def check_run_name_free(config):
    """Before the data is loaded: refuse a --run_name that is taken and an --out_dir that cannot hold runs."""
    check_writable_place(os.path.abspath(config["out_dir"]), "--out_dir")
    path = os.path.join(config["out_dir"], config["run_name"])
    if config["run_name"] and os.path.lexists(path):
        raise OutputError(run_taken(path))


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
                hold_run_lock(path)  # at once: a second run sees a run that is going, not an empty leftover
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
    holder = lock_holder(path)
    if holder:
        return (f"{path} is in use: a run that is still going (process {holder}) writes there; wait for it to finish "
                f"(then --resume={path} continues it, if it stopped early), or choose another --run_name")
    if os.path.isdir(path) and not os.path.lexists(os.path.join(path, "last.pt")) and holds_nothing(path):
        return (f"{path} exists, empty: a run stopped there before its first epoch finished, so there is nothing to "
                f"resume; remove it, or choose another --run_name")
    return (f"{path} exists: a run's directory is never overwritten; continue that run with --resume={path}, "
            f"or choose another --run_name")


def open_run_directory(config):
    """The directory of run(): an interrupted run's (cleared of the temporary files a killed write
    left), an empty one main() claimed, or a new one claimed here. -> config with its run_name."""
    if config["resume"]:
        hold_run_lock(config["resume"], "--resume")
        remove_stale_temporaries(config["resume"])
        return config
    path = run_directory(config)
    if config["run_name"] and os.path.isdir(path) and holds_nothing(path):
        hold_run_lock(path)
        return config
    return claim_run_directory(config)


RUN_LOCK = ".run.lock"  # in a run's directory while a process writes there: fcntl.flock, released when that process ends
_held = {}              # real path of a directory -> (descriptor, lock path) of the locks this process holds


def hold_run_lock(directory, option="--run_name"):
    """Lock `directory` for this process (again, where it holds it already): one run per folder at a time. The lock
    is an flock on RUN_LOCK, which the kernel releases when the process ends however it ends, so a crashed
    run's lock file is stale and taken over. A live holder is an OutputError naming its process."""
    key = os.path.realpath(directory)
    if key in _held:
        return
    path = os.path.join(directory, RUN_LOCK)
    while True:
        try:  # O_NOFOLLOW: a planted link is refused; O_NONBLOCK: a planted FIFO never waits
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as error:
            raise OutputError(f"{option}: cannot lock {directory} ({path}: {error.strerror or error})") from None
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise OutputError(f"{option}: cannot lock {directory}: {path} is not a regular file; remove it")
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise OutputError(f"{option}: {directory} is in use: a run that is still going (process {holder}) writes "
                              f"there; two runs in one folder would overwrite each other's files. Wait for it to finish"
                              ) from None
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed it as this process opened it: lock the file there now
            break
        os.close(descriptor)
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    if not _held:
        atexit.register(release_run_locks)
    _held[key] = (descriptor, path)


def lock_holder(directory):
    """The process id written in the lock of a directory that a live process holds, else '' (no lock file, or a
    stale one: its process ended). A lock this process holds is its own: ''."""
    path = os.path.join(directory, RUN_LOCK)
    if os.path.realpath(directory) in _held or not os.path.isfile(path) or os.path.islink(path):
        return ""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return ""
    except BlockingIOError:
        return os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(descriptor)


def release_run_locks(directory=None):
    """Remove and release the locks this process holds (only that of `directory`, where given)."""
    for key, (descriptor, path) in list(_held.items()):
        if directory is not None and key != os.path.realpath(directory):
            continue
        try:
            os.remove(path)
        except OSError:
            pass
        os.close(descriptor)
        del _held[key]


def holds_nothing(directory):
    """A run directory holds nothing but (perhaps) its lock file."""
    return not [name for name in os.listdir(directory) if name != RUN_LOCK]


def run_directory(config):
    return config["resume"] or os.path.join(config["out_dir"], config["run_name"])


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


def save_best(run_dir, best_state, model, config, feature_set, best):
    save_checkpoint({"model": best_state, "model_args": model.model_args(), "config": config,
                     "class_names": feature_set.class_names, "epoch": best["epoch"], "metrics": best},
                    os.path.join(run_dir, "best.pt"))


def write_history(run_dir, history):
    """history.csv: one row per finished epoch (metrics.epoch_row)."""
    atomic_write(os.path.join(run_dir, "history.csv"), lambda path: pd.DataFrame(history).to_csv(path, index=False))


def export_vectors(run_dir, final):
    """features_<split>.npz: the vectors of every real utterance of each split evaluated at the selected epoch."""
    for split, result in final.items():
        atomic_write(os.path.join(run_dir, f"features_{split}.npz"), lambda path, result=result: np.savez(path, **result["vectors"]))

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


def check_adam_state(optimizer, saved, source):
    """A saved torch.optim.Adam state fits `optimizer` before it is loaded: the same parameter groups
    and settings (the learning rate is set every epoch), and for each parameter a step count and
    moments of exactly its shape and dtype. Fused Adam trusts those shapes and writes past the end of
    a smaller buffer, corrupting memory; so each is checked here, naming the file and the parameter."""
    own = optimizer.state_dict()
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(own["param_groups"]):
        raise ValueError(f"{source}: field 'optimizer' has {len(groups) if isinstance(groups, list) else 'no list of'} "
                         f"parameter groups, this model's optimizer {len(own['param_groups'])}")
    parameters = {}
    for index, (group, mine) in enumerate(zip(groups, own["param_groups"])):
        if not isinstance(group, dict) or set(group) != set(mine) or len(group.get("params", ())) != len(mine["params"]):
            raise ValueError(f"{source}: field 'optimizer': parameter group {index} is not this model's "
                             f"({len(mine['params'])} parameters with the settings {', '.join(sorted(mine))})")
        changed = [key for key in mine if key not in ("params", "lr") and group[key] != mine[key]]
        if changed or not (isinstance(group["lr"], float) and 0 <= group["lr"] < float("inf")):
            wrong = changed[0] if changed else "lr"
            raise ValueError(f"{source}: field 'optimizer': parameter group {index} has {wrong}={group[wrong]!r}, "
                             f"the run's settings give {mine[wrong]!r}")
        parameters.update(zip(group["params"], (p for p in optimizer.param_groups[index]["params"])))
    state = saved.get("state")
    if not isinstance(state, dict):
        raise ValueError(f"{source}: field 'optimizer' has no dict of parameter states")
    moments = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if optimizer.defaults.get("amsgrad") else ())
    for key, entry in state.items():
        if key not in parameters:
            raise ValueError(f"{source}: field 'optimizer' holds a state for parameter {key!r}, which this model has not")
        parameter, where = parameters[key], f"{source}: field 'optimizer', state of parameter {key}"
        if not isinstance(entry, dict) or set(entry) != {"step", *moments} \
                or not all(isinstance(entry[name], torch.Tensor) for name in entry):
            raise ValueError(f"{where}: must be the tensors {', '.join(('step',) + moments)}")
        step = entry["step"]
        if step.numel() != 1 or not step.is_floating_point() or not (0 <= float(step) < float("inf")):
            raise ValueError(f"{where}: step must be one finite count >= 0, got shape {tuple(step.shape)} {step.dtype}")
        for name in moments:
            if entry[name].shape != parameter.shape or entry[name].dtype != parameter.dtype:
                raise ValueError(f"{where}: {name} is {tuple(entry[name].shape)} {entry[name].dtype}, the parameter "
                                 f"{tuple(parameter.shape)} {parameter.dtype}")
        check_finite({f"{key}.{name}": entry[name] for name in moments}, f"{source}: field 'optimizer'", "moments")


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


def write_seed_summary(config, seed_list, results):
    """Mean and std over seeds of the runs' metrics, printed and written to out_dir/run_name/summary.json."""
    summary = {"seeds": seed_list, "config": config}
    for key in ("test_weighted_f1", "test_accuracy", "valid_weighted_f1", "optimistic_test_weighted_f1"):
        values = np.array([r[key] for r in results], dtype=float)  # a null score (no test labels) is NaN
        std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")  # one seed has no spread
        summary[key] = {"mean": float(values.mean()), "std": std, "values": values.tolist()}
        print(f"{key:>30}: {values.mean():.2f} ± {std:.2f} over seeds {seed_list}")
    write_json(os.path.join(config["out_dir"], config["run_name"], "summary.json"), summary)
