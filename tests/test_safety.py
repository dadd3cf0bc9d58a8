"""Untrusted files: feature pickles and checkpoints never run code; interrupted saves lose nothing."""

import copyreg
import errno
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import layouts
import train_MALN
from maln import files
from conftest import ROOT
from dataloader import DataError, load_features, read_pickle
from MALN_model_fix import MALN, MALNConfig
from numpy._core.multiarray import _reconstruct
from maln.files import OutputError, atomic_write, check_output_path, load_checkpoint, load_model_state, save_checkpoint
from utils import write_json


PLANTED = {  # what a malicious pickle asks to call, given a file the call would create
    "os.system": lambda marker: (os.system, (f"touch {marker}",)),
    "eval": lambda marker: (eval, (f"__import__('os').system('touch {marker}')",)),
    "subprocess": lambda marker: (subprocess.Popen, (["touch", str(marker)],)),
    "copyreg": lambda marker: (copyreg._reconstructor, (object, object, str(marker))),
}


class Planted:
    """Pickles as a call to `reduce`: unpickling it runs that call."""

    def __init__(self, reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


class Python2Pickler(pickle._Pickler):
    """Writes what Python 2 wrote: byte strings as str (STRING / BINSTRING opcodes), numpy under
    numpy.core, builtins under __builtin__."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_str_of_python2(self, data):
        if self.proto == 0:
            self.write(b"S" + repr(data)[1:].encode("ascii") + b"\n")
        elif len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(data)

    dispatch[bytes] = save_str_of_python2

    def save_global(self, obj, name=None):
        module = {"numpy._core.multiarray": "numpy.core.multiarray", "builtins": "__builtin__"}.get(obj.__module__, obj.__module__)
        self.write(f"c{module}\n{name or obj.__qualname__}\n".encode("ascii"))
        self.memoize(obj)


def python2_dumps(data, protocol):
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol).dump(data)
    return buffer.getvalue()


def feature_like_data():
    """What the known layouts hold: float32 / int64 arrays, object arrays of str, numpy scalars, sets."""
    return ({"d1": np.arange(6, dtype=np.float32).reshape(2, 3), "d2": np.arange(4, dtype=np.int64)},
            {"d1": np.array(["M", "F"], dtype=object), "d2": [np.float32(1.5), np.int64(3)]},
            ["d1"], {"d2"}, frozenset(["d1"]), b"raw", None, True, 2.5)


def assert_same(loaded, original):
    for a, b in zip(loaded[:2], original[:2]):
        for key in b:
            assert np.array_equal(np.asarray(a[key]), np.asarray(b[key]))
            assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype
    assert loaded[2:] == original[2:]


@pytest.mark.parametrize("protocol", range(6))
def test_restricted_unpickler_reads_numpy_data_of_python3_at_every_protocol(tmp_path, protocol):
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(feature_like_data(), protocol=protocol))
    assert_same(read_pickle(str(path)), feature_like_data())


@pytest.mark.parametrize("protocol", range(3))
def test_restricted_unpickler_reads_numpy_data_of_python2_at_every_protocol(tmp_path, protocol):
    data = feature_like_data()
    original = data[:5] + data[6:]  # without b"raw": Python 2 had no bytes apart from str
    path = tmp_path / "data.pkl"
    written = python2_dumps(original, protocol)
    assert b"numpy.core.multiarray" in written and b"numpy._core" not in written
    path.write_bytes(written)
    assert_same(read_pickle(str(path)), original)


@pytest.mark.parametrize("protocol", [0, 2, 5])
@pytest.mark.parametrize("planted", ["os.system", "eval", "copyreg", "subprocess"])
def test_planted_code_in_a_feature_pickle_is_refused_and_never_runs(tmp_path, protocol, planted):
    marker = tmp_path / "payload_ran"
    payload = Planted(PLANTED[planted](marker))
    data = layouts.cosmic_iemocap(str(tmp_path / "clean.pkl"))
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps((payload, *data[1:]), protocol=protocol))
    with pytest.raises(DataError, match=r"evil\.pkl: refused to load '.*(system|eval|_reconstructor|Popen)'.*--trust_pickle=True"):
        load_features(str(path))
    assert not marker.exists()


def test_the_planted_payload_is_live_once_trusted(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Planted(PLANTED["os.system"](marker))))
    read_pickle(str(path), trust=True)
    assert marker.exists()


def test_trust_pickle_loads_a_class_the_restricted_unpickler_refuses(tmp_path):
    from collections import OrderedDict
    path = tmp_path / "ordered.pkl"
    path.write_bytes(pickle.dumps(OrderedDict(a=1)))
    with pytest.raises(DataError, match="ordered.pkl: refused to load 'collections.OrderedDict'"):
        read_pickle(str(path))
    assert read_pickle(str(path), trust=True) == {"a": 1}


def test_truncated_pickle_is_a_read_error_not_a_refusal(tmp_path):
    path = tmp_path / "cut.pkl"
    layouts.cosmic_iemocap(str(path))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="cut.pkl: cannot be read as a feature pickle") as error:
        load_features(str(path))
    assert "trust_pickle" not in str(error.value)


def small_model(**options):
    settings = {"hidden_size": 8, "speaker_size": 4, "cross_heads": 2, "discriminator_hidden": 4}
    return MALN(MALNConfig(feature_sizes={"t": 6, "a": 4}, n_classes=3, **{**settings, **options}))


def test_checkpoint_with_planted_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_args": {}, "extra": Planted(PLANTED["os.system"](marker))}, path)
    with pytest.raises(ValueError, match="evil.pt: not a MALN checkpoint that loads safely"):
        MALN.from_checkpoint(str(path))
    assert not marker.exists()


def test_checkpoint_of_other_settings_is_one_clear_message(tmp_path):
    path = tmp_path / "best.pt"
    model = small_model()
    save_checkpoint({"model": model.state_dict(), "model_args": model.model_args()}, path)
    with pytest.raises(ValueError, match=r"best.pt: saved by a model of other settings.*is \(8, \d+\), this model's is \(16, \d+\)"):
        load_model_state(small_model(hidden_size=16), load_checkpoint(path)["model"], path)
    save_checkpoint({"model": model.state_dict(), "model_args": {**model.model_args(), "hidden_size": 16}}, path)
    with pytest.raises(ValueError, match="best.pt: saved by a model of other settings"):
        MALN.from_checkpoint(str(path))
    save_checkpoint({"model": model.state_dict(), "model_args": {**model.model_args(), "future_option": 1}}, path)
    with pytest.raises(ValueError, match="best.pt: saved with settings this MALNConfig does not have: future_option"):
        MALN.from_checkpoint(str(path))
    save_checkpoint(model.state_dict(), path)
    with pytest.raises(ValueError, match="best.pt: not a checkpoint saved by train_MALN.py"):
        MALN.from_checkpoint(str(path))


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)

    def write_half_then_fail(checkpoint, file):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", write_half_then_fail)
    with pytest.raises(OutputError, match=r"^cannot write .*last.pt: No space left on device$"):
        save_checkpoint({"epoch": 2, "weights": torch.zeros(3)}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_a_process_killed_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)
    killed_midway = (f"import os, signal, sys; sys.path.insert(0, {ROOT!r}); from maln.files import atomic_write\n"
                     f"def write(target):\n"
                     f"    open(target, 'wb').write(b'half a checkpoint')\n"
                     f"    os.kill(os.getpid(), signal.SIGKILL)\n"
                     f"atomic_write({str(path)!r}, write)\n")
    result = subprocess.run([sys.executable, "-c", killed_midway], timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert load_checkpoint(path)["epoch"] == 1


# ----------------------------------------------------------------------------- bounded memory

class Reduces:
    """Pickles as the given __reduce__ tuple: a hand-made numpy construction."""

    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def maln_dict(features, ids):
    return {"format": "maln-features", "class_names": ["x"], "speakers": {i: ["a"] * 4 for i in ids},
            "labels": {i: [0] * 4 for i in ids}, "features": {"t": features}, "splits": {"train": ids, "valid": [], "test": []}}


def test_a_pickle_repeating_references_to_one_array_is_refused_before_it_expands(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "EXPANSION_FLOOR", 2 ** 20)
    shared, ids = np.zeros((4, 1000), np.float32), [f"d{i}" for i in range(1000)]  # 16 kB, referenced 1000 times
    path = tmp_path / "repeats.pkl"
    path.write_bytes(pickle.dumps(maln_dict({i: shared for i in ids}, ids)))
    with pytest.raises(DataError, match=r"repeats.pkl: holds at least 4,001,000 values \(15.26 MiB as float32\) once its "
                                        r"repeated references are expanded, from 0.\d\d MiB on disk \(at most 1.0\d MiB allowed\)"):
        load_features(str(path))
    path.write_bytes(pickle.dumps(maln_dict({i: shared.copy() for i in ids[:10]}, ids[:10])))
    assert len(load_features(str(path)).splits["train"]) == 9  # the same values, stored: read


@pytest.mark.parametrize("construction, message", [
    ((_reconstruct, (np.ndarray, (10 ** 13,), b"b")), r"claims arrays of 9,313.2 GiB from 0.00 MiB on disk \(at most 256.00 MiB"),
    ((np.ndarray, ((10 ** 13,),)), r"refused to call 'ndarray'"),
    ((bytes, (10 ** 13,)), r"refused bytes\(10000000000000,\)"),
    ((_reconstruct, (np.ndarray, (0,), b"b"), (1, (3,), np.dtype("O"), False, ["a"])),
     r"refused an object array of shape \(3,\) whose state does not hold 3 items"),
    ((_reconstruct, (np.ndarray, (0,), b"b"), (1, (10 ** 13,), np.dtype("f4"), False, b"abcd")), r"claims arrays of"),
])
def test_a_pickle_claiming_memory_it_does_not_hold_is_refused_before_numpy_allocates(tmp_path, construction, message):
    path = tmp_path / "claims.pkl"
    path.write_bytes(pickle.dumps(({"d": Reduces(*construction)},) * 9, protocol=2))
    with pytest.raises(DataError, match=r"claims.pkl: " + message):
        load_features(str(path))


def test_a_pickle_constructing_a_class_directly_is_refused(tmp_path):
    path = tmp_path / "newobj.pkl"
    path.write_bytes(b"\x80\x02cnumpy\nndarray\n" + pickle.dumps((10 ** 13,), 2)[2:-1] + b"\x81.")  # ndarray.__new__(ndarray, shape)
    with pytest.raises(DataError, match=r"newobj.pkl: refused to construct a class instance"):
        read_pickle(str(path))


# ----------------------------------------------------------------------------- outputs

def test_an_output_is_never_an_input_nor_an_existing_file_nor_a_directory(tmp_path, monkeypatch):
    (tmp_path / "input.pkl").write_bytes(b"features")
    (tmp_path / "link.pkl").symlink_to(tmp_path / "input.pkl")
    cases = {
        "input.pkl": r"--out=.*input.pkl is also an input of this command \(.*input.pkl\); writing it would replace that input",
        "link.pkl": r"--out=.*link.pkl is also an input of this command \(.*input.pkl\)",
        ".": r"--out=.* is a directory",
        "input.pkl/out.pkl": r"--out: .*input.pkl is a file, not a directory",
    }
    for output, message in cases.items():
        with pytest.raises(OutputError, match=message):
            check_output_path(str(tmp_path / output), "--out", [str(tmp_path / "input.pkl")])
    (tmp_path / "done.csv").write_text("written by another command")
    with pytest.raises(OutputError, match=r"--out=.*done.csv exists; it is not overwritten"):
        check_output_path(str(tmp_path / "done.csv"), "--out")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match=r"--out: .* is not writable"):
        check_output_path(str(tmp_path / "new" / "out.pkl"), "--out")
    assert (tmp_path / "input.pkl").read_bytes() == b"features"


def test_a_failed_or_interrupted_write_raises_one_line_and_leaves_no_temporary_file(tmp_path):
    def stopped(error):
        def write(temporary):
            open(temporary, "w").write("half")
            raise error
        return write

    with pytest.raises(OutputError, match=r"^cannot write .*out.csv: Read-only file system$"):
        atomic_write(tmp_path / "out.csv", stopped(OSError(errno.EROFS, os.strerror(errno.EROFS))))
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "out.csv", stopped(KeyboardInterrupt()))
    assert os.listdir(tmp_path) == []
    with pytest.raises(OutputError, match=r"^cannot write .*file/out.csv: "):
        (tmp_path / "file").write_text("")
        atomic_write(tmp_path / "file" / "out.csv", lambda temporary: None)


def test_write_json_writes_a_nan_score_as_null(tmp_path):
    write_json(tmp_path / "metrics.json", {"test_weighted_f1": float("nan"), "runs": [float("inf"), 1.5]})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"test_weighted_f1": None, "runs": [None, 1.5]}


# ----------------------------------------------------------------------------- checkpoint fields

def saved_like_train_MALN(model):
    return {"model": model.state_dict(), "model_args": model.model_args(), "class_names": ["a", "b", "c"], "epoch": 1}


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("class_names"), r"not a checkpoint of the kind needed here: it has no class_names"),
    (lambda c: c.update(class_names=["a"]), r"field 'class_names' names 1 classes, the model has 3"),
    (lambda c: c.update(class_names="abc"), r"field 'class_names' must be a non-empty list of class-name strings, got str"),
    (lambda c: c.update(model_args=[1, 2]), r"field 'model_args' must be a dict of model settings, got list"),
    (lambda c: c.update(model={"weight": [1.0]}), r"field 'model' must be a dict of tensors"),
    (lambda c: c["model_args"].update(hidden_size="wide"), r"field 'model_args': hidden_size='wide': must be a whole number >= 1$"),
])
def test_predict_with_a_checkpoint_of_wrong_fields_stops_with_one_line_naming_the_field(tmp_path, change, message):
    checkpoint = saved_like_train_MALN(small_model())
    change(checkpoint)
    save_checkpoint(checkpoint, tmp_path / "best.pt")
    with pytest.raises(SystemExit, match=r"^error: .*best.pt: " + message) as stop:
        train_MALN.main([f"--predict={tmp_path / 'best.pt'}", f"--predictions={tmp_path / 'predictions.csv'}"])
    assert "\n" not in str(stop.value) and not (tmp_path / "predictions.csv").exists()


def test_a_corrupted_checkpoint_is_one_line(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"PK\x03\x04 not a zip at all" * 10)
    with pytest.raises(ValueError, match=r"best.pt: not a MALN checkpoint that loads safely \(not a zip archive .*\)$") as error:
        load_checkpoint(tmp_path / "best.pt")
    assert "\n" not in str(error.value)


def test_a_checkpoint_that_expands_beyond_its_size_is_refused_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "EXPANSION_FLOOR", 2 ** 20)
    save_checkpoint({"model": {"weight": torch.zeros(2 ** 20)}}, tmp_path / "stored.pt")  # 4 MiB of zeros
    with zipfile.ZipFile(tmp_path / "stored.pt") as stored, zipfile.ZipFile(tmp_path / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as bomb:
        for entry in stored.infolist():
            bomb.writestr(entry.filename, stored.read(entry.filename))
    assert load_checkpoint(tmp_path / "stored.pt")["model"]["weight"].shape == (2 ** 20,)
    with pytest.raises(ValueError, match=r"bomb.pt: its entries expand to 4.\d\d MiB from 0.0\d MiB on disk \(at most "
                                         r"1.00 MiB allowed\); refused before loading it"):
        load_checkpoint(tmp_path / "bomb.pt")
