"""
Measured figures kept in the repository, and the documentation tables made from them.

The run directories of a results table are large and stay on the machine that trained them;
what the tables need is small. So every table in README.md and docs/ is made from a record in
benchmarks/measured/<name>.json, and a script writes the record when it measures:

    python -m benchmarks.results --suite=demo --seeds=1,2,3 --run --record=demo      # each finished row, per seed
    python -m benchmarks.baselines --dataset=demo --record=demo_baselines            # a printed table
    python -m benchmarks.results --docs                                              # every table block, rewritten

A table block in a Markdown file is a marker line, the table, and an end line:

    <!-- table RECORD KIND -->                     every row of the record
    <!-- table RECORD KIND: row one | row two -->  these rows, in this order
    ...
    <!-- /table -->

KIND is one of TABLE_KINDS (columns of a results record), `first_epochs` (one results row's
first epochs, a line per seed) or `table` (a record that holds a printed table).
`tests/test_records.py` checks that every block in the repository is what its record gives, so
a table edited by hand fails CI.

A record of results rows holds, per row, the seeds and each figure per seed; a row migrated
from an earlier table whose runs were not kept holds mean and std only (`"migrated": true` on
the record, and its `provenance` says from where).
"""

import json
import math
import os
import platform
import re
import statistics

from maln.files import atomic_write, check_regular_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MEASURED_DIR = os.path.join(ROOT, "benchmarks", "measured")
DOCUMENTS = ("README.md", "docs")  # where table blocks are looked for (a file, or every .md under a folder)

HEADERS = {  # figure -> column header
    "test_weighted_f1": "test wF1", "test_accuracy": "test acc", "valid_weighted_f1": "valid wF1",
    "optimistic_test_weighted_f1": "best-test-epoch wF1 (optimistic)",
    "logistic_regression_test_weighted_f1": "logistic regression, single utterances (test wF1)",
    "modality_from_common_accuracy": "modality from common", "modality_chance": "modality chance",
    "modality_from_common_standardised_accuracy": "modality from common, each modality standardised",
    "modality_from_specific_accuracy": "modality from specific",
    "emotion_from_common_accuracy": "emotion acc from common", "emotion_from_common_weighted_f1": "emotion wF1 from common",
    "emotion_from_specific_accuracy": "emotion acc from specific",
    "emotion_from_specific_weighted_f1": "emotion wF1 from specific",
    "common_specific_abs_cosine": "common-specific abs cosine",
}
TABLE_KINDS = {  # kind -> the figures it shows, after the setting and its number of seeds
    "accuracy": ("test_weighted_f1", "test_accuracy", "valid_weighted_f1", "optimistic_test_weighted_f1"),
    "accuracy_baseline": ("test_weighted_f1", "valid_weighted_f1", "optimistic_test_weighted_f1",
                          "logistic_regression_test_weighted_f1"),
    "probes": ("modality_from_common_accuracy", "modality_chance", "modality_from_common_standardised_accuracy",
               "modality_from_specific_accuracy", "emotion_from_common_weighted_f1", "emotion_from_specific_weighted_f1",
               "common_specific_abs_cosine"),
    "adversarial": ("test_weighted_f1", "valid_weighted_f1", "modality_from_common_accuracy",
                    "modality_from_common_standardised_accuracy", "modality_from_specific_accuracy",
                    "common_specific_abs_cosine"),
}
BLOCK = re.compile(r"^<!-- table (?P<name>[\w.-]+) (?P<kind>\w+)(?:: (?P<rows>.*?))? -->\n(?P<body>.*?)^<!-- /table -->$",
                   re.MULTILINE | re.DOTALL)


class RecordError(ValueError):
    pass


def machine():
    """The machine a record was measured on, in words."""
    import torch
    return f"{os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__}, Python {platform.python_version()}"


def record_path(name):
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
        raise RecordError(f"--record={name}: a record name is letters, digits, '_', '-' and '.' only")
    return os.path.join(MEASURED_DIR, f"{name}.json")


MAX_RECORD_BYTES = 32 * 2 ** 20    # a record of 15,000 rows is a few MB
MAX_DOCUMENT_BYTES = 8 * 2 ** 20   # README.md and docs/*.md are tens of KB


def read_record(name):
    path = record_path(name)
    try:
        text = read_bounded(path, "record", MAX_RECORD_BYTES)
    except FileNotFoundError as error:
        raise RecordError(f"{path}: no readable record ({error})") from None
    except ValueError as error:  # not a regular file, or too large: the message names the file
        raise RecordError(str(error)) from None
    try:
        record = json.loads(text)
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: JSON nested thousands deep
        raise RecordError(f"{path}: no readable record ({error})") from None
    if not isinstance(record, dict) or not ({"rows", "table"} & set(record)):
        raise RecordError(f"{path}: not a record (it needs 'rows' or 'table')")
    check_record(path, record)
    return record


def read_bounded(path, what, limit):
    """A file's text, read whole: a regular file (a link to /dev/zero, a FIFO or a device is refused without
    reading it) of at most `limit` bytes. ValueError naming the file otherwise (FileNotFoundError when missing)."""
    check_regular_file(path, what)
    if os.path.getsize(path) > limit:
        raise ValueError(f"{path}: {os.path.getsize(path):,} bytes, more than a {what}'s {limit:,} bytes at most")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(limit + 1)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror or error})") from None
    if len(text.encode("utf-8")) > limit:
        raise ValueError(f"{path}: more than a {what}'s {limit:,} bytes")
    return text


def is_number(value, allow_none=True):
    """A finite int or float (JSON's Infinity and NaN are not), or None where a figure may be undefined."""
    if value is None:
        return allow_none
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_record(path, record):
    """Every field render() reads is of its kind; one RecordError naming the record and the field otherwise:
    rows {name: {'seeds': [int, ...] or a count, 'figures': {figure: [number or null per seed] or {'mean', 'std'}},
    'first_epochs' (optional): [[[number, number] per epoch] per seed]}; table {'columns': [str], 'rows': [[cell per
    column]]}, a cell being text, a number, null, a reference {'record', 'row', 'figure' or 'column'} of text, or
    {'difference': [reference, reference]}."""
    def fail(field, what):
        raise RecordError(f"{path}: field '{field}' {what}")

    if "rows" in record:
        rows = record["rows"]
        if not isinstance(rows, dict):
            fail("rows", f"must be a dict of rows by name, got {type(rows).__name__}")
        for name, row in rows.items():
            where = f"rows/{name}"
            if not isinstance(row, dict):
                fail(where, f"must be a dict, got {type(row).__name__}")
            for key in ("seeds", "figures"):
                if key not in row:
                    fail(f"{where}/{key}", "is missing")
            seeds = row["seeds"]
            if not ((isinstance(seeds, list) and seeds and all(is_number(s, False) and isinstance(s, int) for s in seeds))
                    or (isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1)):
                fail(f"{where}/seeds", f"must be a list of seeds or a count of them, got {str(seeds)[:40]!r}")
            if not isinstance(row["figures"], dict):
                fail(f"{where}/figures", f"must be a dict of figures, got {type(row['figures']).__name__}")
            for figure, entry in row["figures"].items():
                if isinstance(entry, dict):
                    good = set(entry) <= {"mean", "std"} and all(is_number(entry.get(k)) for k in ("mean", "std"))
                else:
                    good = isinstance(entry, list) and all(is_number(v) for v in entry)
                if not good:
                    fail(f"{where}/figures/{figure}", f"must be finite numbers (or null) per seed, or a finite mean and "
                                                      f"std, got {str(entry)[:40]!r}")
            epochs = row.get("first_epochs", [])
            if not (isinstance(epochs, list) and all(isinstance(seed, list) and all(
                    isinstance(pair, list) and len(pair) == 2 and all(is_number(v, False) for v in pair) for pair in seed)
                    for seed in epochs)):
                fail(f"{where}/first_epochs", "must be, per seed, a list of [training accuracy, validation wF1] pairs")
    if "table" in record:
        table = record["table"]
        if not isinstance(table, dict) or not isinstance(table.get("columns"), list) or not isinstance(table.get("rows"), list):
            fail("table", f"must be a dict of 'columns' and 'rows' lists, got {str(table)[:40]!r}")
        if not all(isinstance(c, str) for c in table["columns"]):
            fail("table/columns", "must be a list of column names")
        for k, row in enumerate(table["rows"]):
            if not (isinstance(row, list) and len(row) == len(table["columns"])):
                fail(f"table/rows/{k}", f"must be a list of {len(table['columns'])} cells, got {str(row)[:40]!r}")
            for j, cell in enumerate(row):
                if isinstance(cell, dict) and set(cell) == {"difference"}:
                    pair = cell["difference"]
                    if not (isinstance(pair, list) and len(pair) == 2 and all(map(is_reference, pair))):
                        fail(f"table/rows/{k}/{j}", f"a difference must be a list of two references, got {str(pair)[:60]!r}")
                elif isinstance(cell, dict):
                    if not is_reference(cell):
                        fail(f"table/rows/{k}/{j}", f"a reference must be text fields record, row and figure or column, got "
                                                    f"{str(cell)[:60]!r}")
                elif not (isinstance(cell, str) or is_number(cell)):
                    fail(f"table/rows/{k}/{j}", f"must be text, a finite number or a reference, got {str(cell)[:40]!r}")


def is_reference(cell):
    """{'record', 'row', 'figure' or 'column'}, every field text."""
    keys = set(cell) if isinstance(cell, dict) else set()
    return ({"record", "row"} <= keys and len(keys & {"figure", "column"}) == 1 and keys <= {"record", "row", "figure", "column"}
            and all(isinstance(v, str) for v in cell.values()))


def write_record(name, record):
    """benchmarks/measured/<name>.json, replaced by `record`."""
    path = record_path(name)
    write_text(path, compact_json(record) + "\n")
    print(f"record: {os.path.relpath(path, ROOT)}")


def compact_json(record):
    """Indented JSON with every list of numbers or strings on one line."""
    text = json.dumps(record, indent=1, ensure_ascii=False)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)


def mean_std(entry):
    """'mean ± std' (n-1) of a row's figure: per-seed values, or a migrated {'mean', 'std'}; 'n/a' where undefined."""
    if isinstance(entry, dict):
        values = entry
        mean, std = values.get("mean"), values.get("std")
    else:
        if not entry or any(v is None or isinstance(v, bool) or not isinstance(v, (int, float)) for v in entry):
            return "n/a"  # undefined (a test split without labels, a probe of one modality), or no figure at all
        mean = statistics.fmean(entry)
        std = statistics.stdev(entry) if len(entry) > 1 else None
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def seed_count(row):
    return len(row["seeds"]) if isinstance(row["seeds"], list) else row["seeds"]


def write_text(path, text):
    """The text written atomically (maln.files.atomic_write): a reader never sees half a file."""
    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def markdown(columns, rows):
    lines = ["| " + " | ".join(map(inert, columns)) + " |", "|" + " --- |" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(inert(v) for v in row) + " |" for row in rows])


MARKUP = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "\n": " ", "\r": " ", "](": "]\\("}


def inert(value):
    """A cell as text that is data, not markup: no HTML (so no comment such as the end of a table block, no
    <img onerror>), no Markdown link or image (`](` escaped: no javascript: link), no cell or line break.
    Code spans and emphasis stay, as the records use them."""
    return re.sub("|".join(map(re.escape, MARKUP)), lambda m: MARKUP[m.group(0)], str(value))


def render(name, kind, chosen=()):
    """The Markdown table of a record: results rows as `kind` columns, or the printed table it holds."""
    record = read_record(name)
    if kind == "table":
        if "table" not in record:
            raise RecordError(f"{record_path(name)}: holds results rows, not a printed table: use a kind of {', '.join(TABLE_KINDS)}")
        return markdown(record["table"]["columns"], [[cell_text(cell) for cell in row] for row in record["table"]["rows"]])
    if kind not in (*TABLE_KINDS, "first_epochs") or "rows" not in record:
        raise RecordError(f"table {name} {kind}: the kind is one of {', '.join(TABLE_KINDS)}, first_epochs (for a results "
                          f"record) or table")
    rows = record["rows"]
    missing = [row for row in chosen if row not in rows]
    if missing:
        raise RecordError(f"{record_path(name)}: no row {missing[0]!r}; its rows: {' | '.join(rows)}")
    if kind == "first_epochs":
        return first_epochs_table(name, rows, chosen)
    figures = TABLE_KINDS[kind]
    body = [[row, seed_count(rows[row]), *(mean_std(rows[row]["figures"].get(f, [None])) for f in figures)]
            for row in (chosen or rows)]
    return markdown(["setting", "seeds", *(HEADERS[f] for f in figures)], body)


def first_epochs_table(name, rows, chosen):
    """The start of training of one row, a line per seed: training accuracy / validation weighted-F1 per epoch."""
    if len(chosen) != 1 or "first_epochs" not in rows[chosen[0]]:
        raise RecordError(f"table {name} first_epochs: name one row whose record keeps its first epochs")
    row = rows[chosen[0]]
    n = max(len(epochs) for epochs in row["first_epochs"])
    body = [[seed, *(f"{accuracy:.1f} / {f1:.1f}" for accuracy, f1 in epochs)] for seed, epochs in zip(row["seeds"], row["first_epochs"])]
    return markdown(["seed", *(f"epoch {e}: train acc / valid wF1" if e == 1 else f"epoch {e}" for e in range(1, n + 1))], body)


def cell_text(cell):
    """A printed table's cell: itself, or a reference to another record's figure, rendered from that record:
    {"record", "row", "figure"} (a results row: mean ± std over its seeds), {"record", "row", "column"} (the cell of a
    printed table whose first column is `row`), or {"difference": [reference, reference]} (the first mean minus the
    second, signed)."""
    if not isinstance(cell, dict):
        return cell
    if "difference" in cell:
        first, second = (referenced_mean(reference) for reference in cell["difference"])
        return f"{first - second:+.2f}"
    record = read_record(cell["record"])
    if "figure" in cell:
        row = record.get("rows", {}).get(cell["row"])
        if row is None:
            raise RecordError(f"{record_path(cell['record'])}: no row {cell['row']!r}")
        if cell["figure"] not in row["figures"]:
            raise RecordError(f"{record_path(cell['record'])}: row {cell['row']!r} has no figure {cell['figure']!r}")
        return mean_std(row["figures"][cell["figure"]])
    table = record.get("table", {})
    if cell["column"] not in table.get("columns", []):
        raise RecordError(f"{record_path(cell['record'])}: no column {cell['column']!r}; its columns: {table.get('columns')}")
    for row in table.get("rows", []):
        if row and row[0] == cell["row"]:
            value = row[table["columns"].index(cell["column"])]
            if isinstance(value, dict):
                raise RecordError(f"{record_path(cell['record'])}: row {cell['row']!r} column {cell['column']!r} is a "
                                  f"reference itself; a reference names a figure or a printed value")
            return value
    raise RecordError(f"{record_path(cell['record'])}: no printed row {cell['row']!r}")


def referenced_mean(reference):
    """The mean a reference renders ('62.19 ± 0.31' or '53.24' -> the number), for a difference of two."""
    text = str(cell_text(reference)).split(" ± ")[0]
    try:
        return float(text)
    except ValueError:
        raise RecordError(f"{record_path(reference['record'])}: row {reference['row']!r} gives {text!r}, not a number a "
                          f"difference can use") from None


def document_paths():
    paths = []
    for place in DOCUMENTS:
        full = os.path.join(ROOT, place)
        if os.path.isdir(full):
            paths += sorted(os.path.join(full, f) for f in os.listdir(full) if f.endswith(".md"))
        elif os.path.exists(full):
            paths.append(full)
    return paths


def regenerated(text):
    """The Markdown text with every table block rewritten from its record."""
    def block(match):
        chosen = [row.strip() for row in (match["rows"] or "").split(" | ") if row.strip()]
        head = match.group(0).split("\n", 1)[0]
        return f"{head}\n{render(match['name'], match['kind'], chosen)}\n<!-- /table -->"
    return BLOCK.sub(block, text)


def update_documents():
    """Rewrite every table block of README.md and docs/*.md; the files that changed are printed."""
    for path in document_paths():
        try:
            text = read_bounded(path, "document", MAX_DOCUMENT_BYTES)
        except (OSError, ValueError) as error:  # the message names the file
            raise RecordError(str(error) if path in str(error) else f"{path}: {error}") from None
        new = regenerated(text)
        if new != text:
            write_text(path, new)
            print(f"tables rewritten: {os.path.relpath(path, ROOT)}")
