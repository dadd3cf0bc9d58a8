"""The restricted unpickler on pickles made to crash, hang or exhaust it: a disguised object dtype never
reaches numpy, the codec machinery never runs, dict keys cannot be made to collide, and sizes and nesting
are bounded. Each case is one DataError naming the file, never a segfault, a hang or a traceback."""

import glob
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
from numpy._core.multiarray import _reconstruct, scalar

from maln import safe_pickle
from conftest import ROOT, SHARED_DATA
from dataloader import DataError, read_pickle


class Reduces:
    """Pickles as `function(*arguments)`, then BUILD with `state` when one is given."""

    def __init__(self, function, arguments, state=None):
        self.reduce = (function, arguments) if state is None else (function, arguments, state)

    def __reduce__(self):
        return self.reduce


OBJECT_STATE_WITHOUT_OBJECTS = (3, "|", None, None, None, -1, -1, 0)   # 'O8', its flags no longer saying it holds objects
INT_STATE_CLAIMING_OBJECTS = (3, "<", None, None, None, -1, -1, 63)    # 'i8', its flags saying it holds objects


def disguised(kind):
    dtype = Reduces(np.dtype, ("O8", False, True), OBJECT_STATE_WITHOUT_OBJECTS)
    if kind == "array":
        return {"d1": Reduces(_reconstruct, (np.ndarray, (0,), b"b"), (1, (2,), dtype, False, b"\x41" * 16))}
    if kind == "scalar":
        return {"d1": [Reduces(scalar, (dtype, b"\x41" * 8))]}
    if kind == "reverse":
        claims = Reduces(np.dtype, ("i8", False, True), INT_STATE_CLAIMING_OBJECTS)
        return {"d1": Reduces(_reconstruct, (np.ndarray, (0,), b"b"), (1, (2,), claims, False, [123456, 654321]))}
    raise ValueError(kind)


def load_in_child(path):
    """read_pickle in a separate process: a crash there is an exit code here, not the end of the test run."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from dataloader import read_pickle, DataError\n"
            "try:\n    data = read_pickle(sys.argv[2]); print(repr(data)[:200])\n"
            "except DataError as error:\n    print('refused:', error)")
    return subprocess.run([sys.executable, "-c", code, ROOT, str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", ["array", "scalar", "reverse"])
def test_a_dtype_whose_state_disguises_objects_never_crashes_the_reader(tmp_path, kind):
    path = tmp_path / "disguised.pkl"
    path.write_bytes(pickle.dumps((disguised(kind),), protocol=2))
    done = load_in_child(path)
    assert done.returncode == 0, f"the reader died: exit {done.returncode} {done.stderr[-300:]}"
    assert "refused:" in done.stdout and "disguised.pkl" in done.stdout, done.stdout
    assert len(done.stdout.strip().splitlines()) == 1


def test_a_dtype_state_can_set_its_byte_order_and_nothing_else(tmp_path):
    path = tmp_path / "big_endian.pkl"
    path.write_bytes(pickle.dumps({"x": np.dtype(">f8"), "y": np.dtype("<U3")}, protocol=2))
    assert read_pickle(str(path)) == {"x": np.dtype(">f8"), "y": np.dtype("<U3")}
    dtype = Reduces(np.dtype, ("f4", False, True), (3, "<", None, None, None, 64, 64, 0))  # a claimed size of 64 bytes
    path.write_bytes(pickle.dumps({"x": Reduces(_reconstruct, (np.ndarray, (0,), b"b"), (1, (2,), dtype, False, b"\0" * 8))}))
    assert read_pickle(str(path))["x"].dtype.itemsize == 4


def test_bytes_written_as_text_are_decoded_as_latin1_and_no_other_codec_runs(tmp_path):
    import _codecs
    path = tmp_path / "bytes.pkl"
    path.write_bytes(pickle.dumps({"raw": b"\x00\xff caf\xe9"}, protocol=2))  # Python 3 writes _codecs.encode(text, 'latin1')
    assert b"_codecs" in path.read_bytes() and read_pickle(str(path)) == {"raw": b"\x00\xff caf\xe9"}
    path.write_bytes(pickle.dumps({"slow": Reduces(_codecs.encode, ("x" * 200_000, "punycode"))}, protocol=2))
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"bytes.pkl: refused to encode str text as 'punycode'"):
        read_pickle(str(path))
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("keys", [
    [k * (2 ** 61 - 1) for k in range(1, 50)],   # ints whose hashes are all 0
    [float(k) + 0.5 for k in range(50)],
    [(k, "x") for k in range(50)],
])
def test_dict_keys_and_set_members_whose_hashes_could_collide_are_refused(tmp_path, keys):
    path = tmp_path / "keys.pkl"
    for data, what in (({key: 0 for key in keys}, "dict"), (set(keys), "set")):
        for protocol in (2, 5):
            path.write_bytes(pickle.dumps({"ids": data}, protocol=protocol))
            with pytest.raises(DataError, match=rf"keys.pkl: refused a {what} key of type {type(keys[0]).__name__}"):
                read_pickle(str(path))


def test_a_dict_or_set_of_more_entries_than_the_bound_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_pickle.RestrictedUnpickler, "MAX_ITEMS", 1000)
    path = tmp_path / "big.pkl"
    for data, what in (({f"d{k}": k for k in range(1001)}, "dict"), (set(range(1001)), "set")):
        for protocol in (0, 2, 5):
            path.write_bytes(pickle.dumps(data, protocol=protocol))
            with pytest.raises(DataError, match=rf"big.pkl: refused a {what} of more than 1,000 entries"):
                read_pickle(str(path))
    path.write_bytes(pickle.dumps({f"d{k}": k for k in range(1000)}))
    assert len(read_pickle(str(path))) == 1000


def test_nesting_deeper_than_the_bound_is_one_line_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.pkl"
    path.write_bytes(deep_pickle(100_000))
    with pytest.raises(DataError, match=rf"deep.pkl: nests containers more than {safe_pickle.MAX_DEPTH} deep"):
        read_pickle(str(path))


def deep_pickle(depth):
    """A list nested `depth` deep, written opcode by opcode (pickle.dumps would recurse that deep)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


@pytest.mark.skipif(not glob.glob(os.path.join(SHARED_DATA, "*.pkl")), reason="no ../shared/data")
def test_the_repositorys_shared_pickles_still_load():
    for path in sorted(glob.glob(os.path.join(SHARED_DATA, "*.pkl"))):
        data = read_pickle(path)
        assert isinstance(data, (tuple, list)) and len(data) in (6, 7, 10, 11), path
