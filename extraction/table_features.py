"""A 'maln' feature file from a table of your own utterances and one array per modality:

    python -m extraction.table_features --table=utterances.csv --t=text.npy --a=audio.npy --v=visual.npy --out=Features/mydata.pkl

(python -m extraction.table_features runs it.) The table has one row per utterance
with the columns TABLE_COLUMNS, Features/README.md says what each holds; row i of each array is
the features of the table's row i. train_MALN.py reads the file written with --features=.
From transcripts and wav files instead of arrays: extract_features.py."""

import csv
import math
import os
import pickle
import sys

import numpy as np
import pandas as pd

from dataloader import LARGEST_FEATURE, MODALITIES, SPLITS, DataError, bad_rows
from maln.cli import parse_options
from maln.files import atomic_write, check_output_path, check_regular_file, size_text


TABLE_COLUMNS = ("dialogue_id", "position", "speaker", "label", "split")


def build_features(table, arrays, path, class_names=None):
    """Write a 'maln' feature file from your own utterances; return what was written.

    table: a CSV path or a DataFrame with one row per utterance and the columns TABLE_COLUMNS
    (rows in any order; positions 0..n-1 in each dialogue; label a class name, empty where
    unlabelled; split train / valid / test). arrays: {modality: (rows, D) array or .npy path},
    row i belonging to the table's row i. class_names: the class order; default sorted labels.
    Raises DataError naming the row that is wrong, OutputError for a path that is one of the
    inputs or exists (nothing is overwritten).
    """
    check_output_path(path, "--out", [x for x in (table, *arrays.values()) if isinstance(x, (str, os.PathLike))])
    rows, where, class_names, dialogues, split_of = check_table(table, class_names)
    class_index = {name: k for k, name in enumerate(class_names)}
    if not arrays:
        raise DataError(f"give at least one modality array: {', '.join(map(repr, MODALITIES))}")
    streams = {m: read_array(m, array, len(rows["position"])) for m, array in arrays.items()}
    data = {
        "format": "maln-features",
        "class_names": class_names,
        "speakers": {d: [rows["speaker"][i] for i in order] for d, order in dialogues.items()},
        "labels": {d: [class_index.get(rows["label"][i]) for i in order] for d, order in dialogues.items()},
        "features": {m: {d: x[order] for d, order in dialogues.items()} for m, x in streams.items()},  # (n, D) each
        "splits": {s: [d for d in dialogues if split_of[d] == s] for s in SPLITS},
    }

    def write(temporary):
        with open(temporary, "wb") as f:
            pickle.dump(data, f)
    atomic_write(path, write)
    return data


def check_table(table, class_names=None, extra=()):
    """Read and check a table of utterances (build_features says how); -> its columns (read_table),
    the function naming row i, the class names, {dialogue id: its rows in position order}, {dialogue id: split}."""
    if class_names is not None and (isinstance(class_names, str) or not all(isinstance(c, str) and c for c in class_names)):
        raise DataError(f"class_names must be a list of non-empty class-name strings, got {class_names!r}")
    rows, where = read_table(table, extra)
    class_names = list(class_names) if class_names else sorted({label for label in rows["label"] if label})
    if len(set(class_names)) != len(class_names):
        raise DataError(f"class names repeat: {class_names}")
    dialogues, split_of = group_utterances(rows, where, {name: k for k, name in enumerate(class_names)})
    return rows, where, class_names, dialogues, split_of


def read_table(table, extra=()):
    """The table's columns (TABLE_COLUMNS, and those of `extra` it has) as lists of stripped strings
    ('' where empty), and a function naming row i."""
    if isinstance(table, pd.DataFrame):
        frame = table.astype(object).where(table.notna(), "")
        def where(i):  # a table read from a file of another kind (a COSMIC transcript file) names its rows itself
            return table.attrs["where"](i) if "where" in table.attrs else f"table row {i}"
    else:
        try:
            check_regular_file(table, "table")
        except (FileNotFoundError, ValueError) as error:
            raise DataError(str(error)) from None
        frame = read_csv(table)
        def where(i):
            return f"{table} row {i} (line {i + 2})"
    missing = [c for c in TABLE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"the table has no column {', '.join(missing)}; it needs {', '.join(TABLE_COLUMNS)}")
    if frame.empty:
        raise DataError("the table has no rows")
    columns = TABLE_COLUMNS + tuple(c for c in extra if c in frame.columns)
    return {c: [str(value).strip() for value in frame[c]] for c in columns}, where


def read_csv(path):
    """A UTF-8 CSV file as a DataFrame of strings; every line has the header's number of fields."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            lines = [(reader.line_num, line) for line in reader if line]
    except (UnicodeDecodeError, csv.Error, OSError) as error:
        raise DataError(f"{path}: cannot be read as a UTF-8 CSV table ({type(error).__name__}: {error})") from None
    if not lines:
        raise DataError(f"{path}: is empty; a table starts with the header line {','.join(TABLE_COLUMNS)}")
    (_, header), body = lines[0], lines[1:]
    if len(set(header)) != len(header):
        raise DataError(f"{path}: the header repeats a column: {header}")
    for number, line in body:
        if len(line) != len(header):
            raise DataError(f"{path} line {number}: {len(line)} fields, the header has {len(header)}")
    return pd.DataFrame([line for _, line in body], columns=header, dtype=str)


def group_utterances(rows, where, class_index):
    """Check every row; -> {dialogue id: its row numbers in position order}, {dialogue id: split}."""
    at, split_of = {}, {}  # (dialogue, position) -> row; dialogue -> (split, first row)
    for i, (dialogue, position, speaker, label, split) in enumerate(zip(*(rows[c] for c in TABLE_COLUMNS))):
        if not dialogue or not speaker:
            raise DataError(f"{where(i)}: empty {'dialogue_id' if not dialogue else 'speaker'}")
        if not position.isdecimal():
            raise DataError(f"{where(i)}: position {position!r} is not a whole number 0, 1, 2, ...")
        if split not in SPLITS:
            raise DataError(f"{where(i)}: split {split!r} is none of {', '.join(SPLITS)}")
        if label and label not in class_index:
            raise DataError(f"{where(i)}: label {label!r} is none of the classes {list(class_index)}")
        key = (dialogue, int(position))
        if key in at:
            raise DataError(f"{where(i)}: dialogue {dialogue!r} position {key[1]} is already at {where(at[key])}")
        at[key] = i
        first_split, first = split_of.setdefault(dialogue, (split, i))
        if split != first_split:
            raise DataError(f"{where(i)}: dialogue {dialogue!r} is in split {split!r} here but {first_split!r} at {where(first)}")
    dialogues = {d: [] for d in split_of}
    for (dialogue, position), i in sorted(at.items(), key=lambda item: item[0][1]):
        if position != len(dialogues[dialogue]):
            raise DataError(f"dialogue {dialogue!r} has no position {len(dialogues[dialogue])} (its next is {position}, "
                            f"at {where(i)}); positions run 0..n-1 in each dialogue")
        dialogues[dialogue].append(i)
    return dialogues, {d: split for d, (split, _) in split_of.items()}


def read_array(modality, array, n_rows):
    """One modality's (rows, D) float32 features, checked against the table."""
    if modality not in MODALITIES:
        raise DataError(f"modality {modality!r}: the modalities are {', '.join(f'{m!r} ({name})' for m, name in MODALITIES.items())}"
                        f" (dataloader.MODALITIES: add a line there for another)")
    is_file = isinstance(array, (str, os.PathLike))
    name = f"modality '{modality}'" + (f" ({array})" if is_file else "")
    x = read_npy(array, name) if is_file else np.asarray(array)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{name}: dtype {x.dtype}, expected numbers (float or int)")
    if x.ndim != 2 or len(x) != n_rows:
        raise DataError(f"{name}: shape {x.shape}, expected ({n_rows}, D): one row per row of the table")
    if x.shape[1] == 0:
        raise DataError(f"{name}: shape {x.shape}: no feature columns")
    x = x.astype(np.float32)
    not_finite, too_large = bad_rows(x)
    if len(not_finite):
        raise DataError(f"{name}: row {not_finite[0]} (the table's row {not_finite[0]}) has NaN or inf features "
                        f"({len(not_finite)} such rows)")
    if len(too_large):
        raise DataError(f"{name}: row {too_large[0]} (the table's row {too_large[0]}) has values beyond ±{LARGEST_FEATURE:g}, "
                        f"which overflow in training; rescale the features")
    return x


def read_npy(path, name):
    """A .npy array of numbers; its header is checked against the file's size before anything is allocated."""
    try:
        check_regular_file(path, ".npy file")
    except FileNotFoundError:
        raise DataError(f"{name}: file not found") from None
    except ValueError as error:
        raise DataError(f"{name}: {error}") from None
    with open(path, "rb") as f:
        is_archive = f.read(4) == b"PK\x03\x04"
    if is_archive:
        raise DataError(f"{name}: an .npz archive; give one .npy array per modality (numpy.save)")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            stored = os.fstat(f.fileno()).st_size - f.tell()
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{name}: not a .npy array ({error})") from None
    if dtype.hasobject:
        raise DataError(f"{name}: an array of Python objects (dtype {dtype}); save an array of numbers")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > stored:
        raise DataError(f"{name}: its header claims shape {shape} of {dtype} ({size_text(claimed)}), the file holds "
                        f"{stored} bytes of data")
    return np.load(path, allow_pickle=False)


def main(argv):
    """python -m extraction.table_features --table=utterances.csv --t=text.npy [--a=audio.npy] [--v=visual.npy]
    --out=Features/mydata.pkl [--class_names=name,name,...]   (one --<m>= per modality of dataloader.MODALITIES)"""
    options, _ = parse_options(argv, {"table": "", "out": "", "class_names": "", **{m: "" for m in MODALITIES}},
                                   usage=main.__doc__)
    if not options["table"] or not options["out"]:
        raise SystemExit(f"--table= and --out= are required; usage: {main.__doc__}")
    class_names = options["class_names"].split(",") if options["class_names"] else None
    try:
        data = build_features(options["table"], {m: options[m] for m in MODALITIES if options[m]}, options["out"], class_names)
    except (DataError, OSError) as error:  # OSError: OutputError, or an input that cannot be read
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {options['out']}: {describe(data)}")


def describe(data):
    """One line on what a file written by build_features holds."""
    labels = [y for dialogue in data["labels"].values() for y in dialogue]
    sizes = {m: next(iter(streams.values())).shape[1] for m, streams in data["features"].items()}
    return (f"dialogues train/valid/test {'/'.join(str(len(data['splits'][s])) for s in SPLITS)}, "
            f"{len(labels)} utterances ({sum(y is not None for y in labels)} labelled), feature sizes {sizes}, "
            f"classes {data['class_names']}")


if __name__ == "__main__":
    main(sys.argv[1:])
