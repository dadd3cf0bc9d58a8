"""Every results table in README.md and docs/ is what benchmarks/results.py --docs makes from the
records in benchmarks/measured/: none is copied by hand."""

import json
import os

import pytest

from conftest import ROOT
from benchmarks import records
from benchmarks import results


@pytest.fixture
def measured(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MEASURED_DIR", str(tmp_path / "measured"))
    return tmp_path / "measured"


def test_every_table_block_in_the_documents_is_what_its_record_gives():
    paths = records.document_paths()
    assert any(path.endswith("README.md") for path in paths)
    blocks = 0
    for path in paths:
        text = open(path).read()
        blocks += len(records.BLOCK.findall(text))
        assert records.regenerated(text) == text, f"{path}: a table differs from its record; run python -m benchmarks.results --docs"
    assert blocks >= 10


def test_a_number_edited_by_hand_in_a_table_is_caught():
    text = open(os.path.join(ROOT, "README.md")).read()
    match = records.BLOCK.search(text)
    body = match["body"]
    edited = text.replace(body, body.replace(" ± ", " ± 9", 1))
    assert edited != text and records.regenerated(edited) == text


def test_a_results_row_shows_mean_and_std_over_its_seeds(measured):
    records.write_record("r", {"rows": {
        "full model": {"seeds": [1, 2, 3], "figures": {"test_weighted_f1": [60.0, 61.0, 62.0], "valid_weighted_f1": [50.0, None, 52.0]}},
        "older row": {"seeds": 5, "figures": {"test_weighted_f1": {"mean": 58.93, "std": 1.41}}}}})
    table = records.render("r", "accuracy").splitlines()
    assert table[2] == "| full model | 3 | 61.00 ± 1.00 | n/a | n/a | n/a |"
    assert table[3] == "| older row | 5 | 58.93 ± 1.41 | n/a | n/a | n/a |"
    assert records.render("r", "accuracy", ["older row"]).splitlines()[2].startswith("| older row |")
    with pytest.raises(records.RecordError, match="no row 'missing'"):
        records.render("r", "accuracy", ["missing"])


def test_a_composed_table_takes_each_cell_from_the_record_it_names(measured):
    records.write_record("runs", {"rows": {"full model": {"seeds": [1, 2], "figures": {"test_weighted_f1": [60.0, 62.0]}}}})
    records.write_record("printed", {"table": {"columns": ["model", "test wF1"], "rows": [["linear", "45.39"]]}})
    records.write_record("both", {"table": {"columns": ["", "IEMOCAP"], "rows": [
        ["MALN", {"record": "runs", "row": "full model", "figure": "test_weighted_f1"}],
        ["linear", {"record": "printed", "row": "linear", "column": "test wF1"}]]}})
    assert records.render("both", "table").splitlines()[2:] == ["| MALN | 61.00 ± 1.41 |", "| linear | 45.39 |"]


def test_a_gain_cell_is_the_difference_of_the_two_means_it_names(measured):
    records.write_record("runs", {"rows": {"full model": {"seeds": [1, 2], "figures": {"test_weighted_f1": [60.0, 62.0]}}}})
    records.write_record("printed", {"table": {"columns": ["model", "test wF1"], "rows": [["encoder", "53.24"]]}})
    maln, encoder = ({"record": "runs", "row": "full model", "figure": "test_weighted_f1"},
                     {"record": "printed", "row": "encoder", "column": "test wF1"})
    records.write_record("gain", {"table": {"columns": ["", "gain"], "rows": [["MALN over its encoder", {"difference": [maln, encoder]}],
                                                                            ["the other way", {"difference": [encoder, maln]}]]}})
    assert records.render("gain", "table").splitlines()[2:] == ["| MALN over its encoder | +7.76 |", "| the other way | -7.76 |"]
    with pytest.raises(records.RecordError, match="a difference must be a list of two references"):
        records.write_record("bad", {"table": {"columns": ["gain"], "rows": [[{"difference": [maln]}]]}})
        records.render("bad", "table")


def test_results_records_every_finished_row_seed_by_seed(tmp_path, measured):
    out = str(tmp_path / "runs")
    for row, seeds in (("full model", [1, 2]), ("without SCLM", [1])):
        directory = results.run_dir(out, "demo", row)
        for seed in seeds:
            os.makedirs(os.path.join(directory, f"seed{seed}"))
            metrics = {key: 70.0 + seed for key in results.COLUMNS}
            metrics["logistic_regression"] = {"test_weighted_f1": 81.0}
            json.dump(metrics, open(os.path.join(directory, f"seed{seed}", "metrics.json"), "w"))
            with open(os.path.join(directory, f"seed{seed}", "history.csv"), "w") as f:
                f.write("epoch,train_accuracy,valid_weighted_f1\n" + "".join(f"{e},{20 + e},{10 * e}\n" for e in range(1, 8)))
        if row == "full model":  # the other row has not finished all its seeds
            summary = {"seeds": seeds, **{key: {"mean": 71.5, "std": 0.7} for key in results.COLUMNS}}
            json.dump(summary, open(os.path.join(directory, "summary.json"), "w"))
    results.record_suite("demo_test", "demo", out, ["--epochs=2"])
    record = records.read_record("demo_test")
    assert list(record["rows"]) == ["full model"]
    assert record["rows"]["full model"]["figures"]["test_weighted_f1"] == [71.0, 72.0]
    assert record["rows"]["full model"]["figures"]["logistic_regression_test_weighted_f1"] == [81.0, 81.0]
    assert record["rows"]["full model"]["first_epochs"][1] == [[21.0, 10.0], [22.0, 20.0], [23.0, 30.0], [24.0, 40.0], [25.0, 50.0]]
    assert records.render("demo_test", "first_epochs", ["full model"]).splitlines()[3] == \
        "| 2 | 21.0 / 10.0 | 22.0 / 20.0 | 23.0 / 30.0 | 24.0 / 40.0 | 25.0 / 50.0 |"
    assert "--epochs=2" in record["command"] and "CPU" in record["machine"]


def test_the_readme_stays_a_front_door_under_15000_characters():
    assert len(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()) < 15000


def test_recording_chosen_rows_keeps_the_records_other_rows_as_measured(tmp_path, measured):
    out = str(tmp_path / "runs")
    for row, value in (("full model", 70.0), ("without SCLM", 60.0)):
        directory = results.run_dir(out, "demo", row)
        os.makedirs(os.path.join(directory, "seed1"))
        json.dump({key: value for key in results.COLUMNS}, open(os.path.join(directory, "seed1", "metrics.json"), "w"))
        with open(os.path.join(directory, "seed1", "history.csv"), "w") as f:
            f.write("epoch,train_accuracy,valid_weighted_f1\n1,20,10\n")
        json.dump({"seeds": [1], **{key: {"mean": value, "std": 0.0} for key in results.COLUMNS}},
                  open(os.path.join(directory, "summary.json"), "w"))
    kept = {"seeds": [1, 2, 3], "figures": {"test_weighted_f1": [80.0, 81.0, 82.0]}, "first_epochs": [[], [], []]}
    records.write_record("demo_test", {"suite": "demo", "command": "earlier", "machine": "m", "rows": {"full model": kept}})
    results.record_suite("demo_test", "demo", out, [], only=["without SCLM"])
    rows = records.read_record("demo_test")["rows"]
    assert rows["full model"] == kept and rows["without SCLM"]["figures"]["test_weighted_f1"] == [60.0]
