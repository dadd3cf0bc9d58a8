"""Untrusted files: feature pickles and checkpoints never run code; interrupted saves lose nothing."""

import copyreg
import errno
import io
import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import layouts
from conftest import ROOT
from dataloader import DataError, load_features, read_pickle
from MALN_model_fix import MALN, MALNConfig
from utils import OutputError, load_checkpoint, load_model_state, save_checkpoint


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
    settings = {"hidden_size": 8, "speaker_size": 4, "cross_heads": 2, "cross_feedforward": 8, "discriminator_hidden": 4}
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
    killed_midway = (f"import os, signal, sys; sys.path.insert(0, {ROOT!r}); from utils import atomic_write\n"
                     f"def write(target):\n"
                     f"    open(target, 'wb').write(b'half a checkpoint')\n"
                     f"    os.kill(os.getpid(), signal.SIGKILL)\n"
                     f"atomic_write({str(path)!r}, write)\n")
    result = subprocess.run([sys.executable, "-c", killed_midway], timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert load_checkpoint(path)["epoch"] == 1
