"""benchmarks/results.py --docs and its records on hostile or careless input: records are data, not markup
(nothing ends a table block early or lands as HTML or a link), --docs is idempotent, a tampered record is one
line naming the record and the field, files read whole are regular files of bounded size, and Ctrl-C or a
full disk during --docs is one line."""

import errno
import json
import os

import pytest

from benchmarks import records
from benchmarks import results


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A repository of its own: records under benchmarks/measured, one document README.md with a table block."""
    monkeypatch.setattr(records, "MEASURED_DIR", str(tmp_path / "measured"))
    monkeypatch.setattr(records, "ROOT", str(tmp_path))
    (tmp_path / "measured").mkdir()
    (tmp_path / "README.md").write_text("# Results\n\n<!-- table r accuracy -->\n<!-- /table -->\n\nAfter the table.\n")
    return tmp_path


def good_row():
    return {"seeds": [1, 2], "figures": {"test_weighted_f1": [60.0, 62.0]}}


def write(place, name, record):
    (place / "measured" / f"{name}.json").write_text(json.dumps(record))


def docs():
    results.main(["--docs"])


HOSTILE_NAME = 'full <!-- /table --> <img src=x onerror="alert(1)"> [click](javascript:alert(1)) a|b\nnext'


def test_a_row_name_holding_the_end_of_a_block_html_and_a_link_is_written_as_inert_text(place):
    write(place, "r", {"rows": {HOSTILE_NAME: good_row()}})
    docs()
    text = (place / "README.md").read_text()
    assert text.count("<!-- /table -->") == 1 and "<img" not in text and "](javascript" not in text
    assert "&lt;img src=x onerror=\"alert(1)\"&gt;" in text and "a\\|b next" in text
    assert text.endswith("<!-- /table -->\n\nAfter the table.\n")
    once = text
    docs()
    docs()
    assert (place / "README.md").read_text() == once


def test_printed_tables_and_column_names_are_inert_too(place):
    (place / "README.md").write_text("<!-- table p table -->\n<!-- /table -->\n")
    write(place, "p", {"table": {"columns": ["<b>x</b>", "y"], "rows": [["![i](http://e/x.png)", "<!-- /table -->"]]}})
    docs()
    text = (place / "README.md").read_text()
    assert text.count("<!--") == 2 and "<b>" not in text and "](http" not in text  # the block's own two markers


@pytest.mark.parametrize("record, field", [
    ({"rows": {"full": {"figures": {}}}}, r"rows/full/seeds' is missing"),
    ({"rows": {"full": {"seeds": [1]}}}, r"rows/full/figures' is missing"),
    ({"rows": ["full"]}, r"rows' must be a dict of rows by name, got list"),
    ({"rows": {"full": {"seeds": [1], "figures": {"test_weighted_f1": {"mean": "60", "std": 1}}}}},
     r"rows/full/figures/test_weighted_f1' must be finite numbers"),
    ({"rows": {"full": {"seeds": "1,2", "figures": {}}}}, r"rows/full/seeds' must be a list of seeds or a count"),
    ({"table": "| a | b |"}, r"table' must be a dict of 'columns' and 'rows' lists"),
    ({"table": {"columns": ["a"], "rows": [[1, 2]]}}, r"table/rows/0' must be a list of 1 cells"),
    ({"table": {"columns": ["a"], "rows": [[{"record": 5, "row": "x", "figure": "f"}]]}}, r"table/rows/0/0' a reference must be text"),
])
def test_a_tampered_record_is_one_line_naming_the_record_and_the_field(place, record, field):
    write(place, "r", record)
    (place / "README.md").write_text("<!-- table r table -->\n<!-- /table -->\n" if "table" in record else
                                     "<!-- table r accuracy -->\n<!-- /table -->\n")
    with pytest.raises(SystemExit, match=rf"^error: .*measured/r.json: field '{field}"):
        docs()


def test_infinity_in_a_record_is_named_with_its_field(place):
    (place / "measured" / "r.json").write_text('{"rows": {"full": {"seeds": [1], "figures": {"test_weighted_f1": [Infinity]}}}}')
    with pytest.raises(SystemExit, match=r"^error: .*r.json: field 'rows/full/figures/test_weighted_f1' must be finite"):
        docs()


@pytest.mark.parametrize("reference, message", [
    ({"record": "q", "row": "a", "column": "nope"}, r"q.json: no column 'nope'"),
    ({"record": "q", "row": "a", "figure": "f"}, r"q.json: no row 'a'"),
])
def test_a_reference_to_a_missing_column_or_row_is_one_line(place, reference, message):
    (place / "README.md").write_text("<!-- table p table -->\n<!-- /table -->\n")
    write(place, "q", {"table": {"columns": ["name", "x"], "rows": [["a", "1"]]}})
    write(place, "p", {"table": {"columns": ["c"], "rows": [[reference]]}})
    with pytest.raises(SystemExit, match=rf"^error: .*{message}"):
        docs()


@pytest.mark.parametrize("what", ["record", "document"])
@pytest.mark.parametrize("kind", ["link to /dev/zero", "fifo", "too large"])
def test_records_and_documents_are_read_only_as_regular_files_of_bounded_size(place, monkeypatch, no_hang, what, kind):
    write(place, "r", {"rows": {"full": good_row()}})
    path = place / "measured" / "r.json" if what == "record" else place / "README.md"
    if kind == "too large":
        monkeypatch.setattr(records, "MAX_RECORD_BYTES" if what == "record" else "MAX_DOCUMENT_BYTES", 16)
        message = r"more than a (record|document)'s 16 bytes"
    else:
        path.unlink()
        os.symlink("/dev/zero", path) if kind == "link to /dev/zero" else os.mkfifo(path)
        message = "is a character device" if kind == "link to /dev/zero" else r"is a FIFO \(named pipe\)"
    with pytest.raises(SystemExit, match=rf"^error: .*{path.name}.*{message}"):
        docs()


def test_ctrl_c_and_a_full_disk_during_docs_are_one_line(place, monkeypatch, capsys):
    write(place, "r", {"rows": {"full": good_row()}})
    before = (place / "README.md").read_text()
    monkeypatch.setattr(records, "write_text", lambda path, text: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, f"cannot write {path}: No space left on device")))
    with pytest.raises(SystemExit, match=r"^error: .*cannot write .*README.md: No space left on device"):
        docs()
    monkeypatch.setattr(records, "write_text", lambda path, text: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit) as stop:
        docs()
    assert stop.value.code == 130 and "interrupted: each document is rewritten whole or not at all" in capsys.readouterr().err
    assert (place / "README.md").read_text() == before


def test_a_real_full_disk_leaves_the_document_whole(place, monkeypatch):
    from maln import files
    write(place, "r", {"rows": {"full": good_row()}})
    before = (place / "README.md").read_text()
    real_open = open

    def failing_write(*args, **kwargs):
        handle = real_open(*args, **kwargs)
        if "w" in str(args[1:2]) or kwargs.get("mode", "").startswith("w"):
            handle.write = lambda text: (_ for _ in ()).throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return handle
    monkeypatch.setattr("builtins.open", failing_write)
    with pytest.raises(SystemExit, match=r"^error: cannot write .*README.md: No space left on device$"):
        docs()
    monkeypatch.undo()
    assert (place / "README.md").read_text() == before
    assert not [name for name in os.listdir(place) if name.startswith(files.TEMPORARY_PREFIX)]


def test_a_record_that_is_not_utf8_is_one_line_naming_it(place):
    (place / "measured" / "r.json").write_bytes(b'{"rows": {"\xff": 1}}')
    with pytest.raises(SystemExit, match=r"^error: .*measured/r.json: not UTF-8 text"):
        docs()


def test_a_record_nested_thousands_deep_is_one_line(place):
    (place / "measured" / "r.json").write_text('{"rows": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(SystemExit, match=r"^error: .*measured/r.json: no readable record"):
        docs()
