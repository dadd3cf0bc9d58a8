import json
import os
import sys

import numpy as np
import pytest
import torch

from benchmarks import baselines
from benchmarks import results
import train_MALN
from dataloader import Dialogue, FeatureSet, make_demo


def test_table_gathers_each_rows_summary_as_mean_and_std(tmp_path):
    for row, values in (("full model", [60.0, 62.0]), ("without SCLM", [50.0, 51.0, 55.0])):
        directory = results.run_dir(str(tmp_path), "iemocap_text", row)
        os.makedirs(directory)
        summary = {"seeds": list(range(len(values)))}
        for key in results.COLUMNS:
            mean = sum(values) / len(values)
            std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
            summary[key] = {"mean": mean, "std": std, "values": values}
        json.dump(summary, open(os.path.join(directory, "summary.json"), "w"))
    frame = results.table("iemocap_text", str(tmp_path))
    assert frame["setting"].tolist() == ["full model", "without SCLM"]      # suite order, missing rows left out
    assert frame["seeds"].tolist() == [2, 3]
    assert frame["test wF1"].tolist() == ["61.00 ± 1.41", "52.00 ± 2.65"]
    assert results.markdown(frame).splitlines()[2].startswith("| full model | 2 | 61.00 ± 1.41 |")


def test_decomposition_table_gives_each_rows_probe_figures_over_seeds(tmp_path):
    figures = {key: 0.5 for key in results.PROBE_COLUMNS}
    for row, seeds in (("full model", {1: 0.4, 2: 0.6}), ("without orthogonality", {1: 0.9})):
        for seed, value in seeds.items():
            directory = os.path.join(results.run_dir(str(tmp_path), "decomposition", row), f"seed{seed}")
            os.makedirs(directory)
            decomposition = {**figures, "modality_from_common_accuracy": value}
            json.dump({"decomposition": decomposition}, open(os.path.join(directory, "metrics.json"), "w"))
    frame = results.decomposition_table("decomposition", str(tmp_path))
    assert frame["setting"].tolist() == ["full model", "without orthogonality"]
    assert frame["seeds"].tolist() == [2, 1]
    assert frame["modality from common"].tolist() == ["0.50 ± 0.14", "0.90"]
    assert frame["emotion wF1 from specific"].tolist() == ["0.50 ± 0.00", "0.50"]
    assert results.mean_std([None, None]) == "n/a"
FAKE_RUN = """
import json, os, sys
directory, seed, fail = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "fail"
os.makedirs(directory, exist_ok=True)
if fail:
    sys.exit("error: this seed went wrong")
for name in ("last.pt", "best.pt", "history.csv"):  # the outputs a finished run writes before its metrics.json
    open(os.path.join(directory, name), "w").close()
metrics = {key: 50.0 + seed for key in ("test_weighted_f1", "test_accuracy", "valid_weighted_f1", "optimistic_test_weighted_f1")}
json.dump({**metrics, "config": {"export_features": False}}, open(os.path.join(directory, "metrics.json"), "w"))
"""


def test_each_seed_runs_as_its_own_process_and_finished_rows_get_a_summary(tmp_path, monkeypatch):
    launched = []

    def fake_command(arguments, seed, seed_dir, out_dir, threads):
        launched.append(threads)
        fail = "--sclm_mode=off" in arguments and seed == 2
        return [sys.executable, "-c", FAKE_RUN, seed_dir, str(seed), "fail" if fail else "ok"]

    monkeypatch.setattr(results, "seed_command", fake_command)
    monkeypatch.setattr(results, "available_cores", lambda: 4)
    failures = results.train_missing("demo", "1,2,3", str(tmp_path), ["--epochs=2"], ["full model", "without SCLM"], jobs=2)
    assert launched == [2] * 6                                                    # 4 cores, 2 jobs: 2 threads each
    assert len(failures) == 1 and "'without SCLM' seed 2 (exit status 1)" in failures[0]
    assert "this seed went wrong" in failures[0]                                  # the end of its log
    summary = json.load(open(os.path.join(results.run_dir(str(tmp_path), "demo", "full model"), "summary.json")))
    assert summary["seeds"] == [1, 2, 3] and summary["test_weighted_f1"]["values"] == [51.0, 52.0, 53.0]
    assert summary["test_weighted_f1"]["std"] == 1.0 and summary["config"]["epochs"] == 2
    assert not os.path.exists(os.path.join(results.run_dir(str(tmp_path), "demo", "without SCLM"), "summary.json"))
    launched.clear()
    results.train_missing("demo", "1,2,3", str(tmp_path), ["--epochs=2"], ["full model", "without SCLM"], jobs=2)
    assert len(launched) == 1                                                     # only the failed seed runs again


WAIT_FOR_THE_OTHER = """
import os, sys, time
mine, other = sys.argv[1:3]
open(mine, "w").close()
deadline = time.time() + 10
while not os.path.exists(other) and time.time() < deadline:
    time.sleep(0.05)
sys.exit(0 if os.path.exists(other) else 3)
"""


def test_jobs_run_side_by_side(tmp_path):
    marks = [str(tmp_path / "first"), str(tmp_path / "second")]
    runs = [(f"run {i}", [sys.executable, "-c", WAIT_FOR_THE_OTHER, marks[i], marks[1 - i]], str(tmp_path / f"run{i}"))
            for i in range(2)]
    assert results.run_side_by_side(runs, jobs=2) == []                          # each saw the other running


def test_seed_command_splits_threads_and_continues_an_interrupted_seed(tmp_path):
    arguments = results.row_arguments("demo", "without SCLM", str(tmp_path), ["--epochs=2"], threads=3)
    seed_dir = os.path.join(results.run_dir(str(tmp_path), "demo", "without SCLM"), "seed7")
    command = results.seed_command(arguments, 7, seed_dir, str(tmp_path), 3)
    config = train_MALN.parse_overrides(command[2:])
    assert (config["threads"], config["seed"], config["sclm_mode"], config["epochs"]) == (3, 7, "off", 2)
    assert os.path.join(config["out_dir"], config["run_name"]) == seed_dir
    given = results.row_arguments("demo", "full model", str(tmp_path), ["--threads=1"], threads=3)
    assert train_MALN.parse_overrides(given)["threads"] == 1                       # a --threads given to results.py wins
    os.makedirs(seed_dir)
    open(os.path.join(seed_dir, "last.pt"), "w").close()
    assert results.seed_command(arguments, 7, seed_dir, str(tmp_path), 3)[2:] == [f"--resume={seed_dir}", "--threads=3"]


def test_logistic_regression_baseline_scores_test_after_fitting_train_and_valid():
    rng = np.random.default_rng(0)

    def dialogue(i, labels):  # features: the label one-hot plus noise, so a linear model separates them
        labels = torch.tensor(labels)
        features = torch.eye(3)[labels] * 4 + torch.tensor(rng.normal(scale=0.3, size=(len(labels), 3)), dtype=torch.float32)
        return Dialogue(f"d{i}", {"t": features}, torch.zeros(len(labels), dtype=torch.long), labels)

    splits = {"train": [dialogue(i, [0, 1, 2] * 4) for i in range(6)], "valid": [dialogue(9, [0, 1, 2])],
              "test": [dialogue(10, [0, 0, 1, 2, -1])]}
    weighted, per_class = baselines.logistic_regression_baseline(FeatureSet("x", "maln", ["a", "b", "c"], splits))
    assert weighted == 100.0 and per_class == {"a": 100.0, "b": 100.0, "c": 100.0}


def test_structured_demo_baseline_removes_the_speaker_offsets_a_single_utterance_model_cannot():
    feature_set = make_demo(0, n_dialogues=(80, 10, 30), speaker_scale=3.0)   # offsets three times the class signal
    single, _ = baselines.logistic_regression_baseline(feature_set)
    structured, per_class = baselines.structured_demo_baseline(feature_set)
    assert structured > single + 10 and set(per_class) == set(feature_set.class_names)


def test_speaker_context_features_are_the_utterance_its_speakers_mean_and_the_dialogue_mean():
    features = torch.tensor([[1.0], [3.0], [8.0]])
    dialogue = Dialogue("d", {"t": features}, torch.tensor([0, 1, 0]), torch.tensor([0, 1, 0]))
    assert baselines.with_speaker_context(dialogue).tolist() == [[1, 4.5, 4], [3, 3, 4], [8, 4.5, 4]]


def test_a_row_name_that_is_not_in_the_suite_is_refused_with_the_suites_rows():
    with pytest.raises(SystemExit, match="no row 'SCLM per utterances' in suite demo; its rows:\n  full model\n"):
        results.main(["--suite=demo", "--rows=full model,SCLM per utterances"])
    assert not any("," in row for _, rows in results.SUITES.values() for row in rows)   # --rows separates names by commas


def test_a_demo_suite_row_means_what_its_record_measured_whatever_config_demo_holds_now():
    def trained(row):
        return train_MALN.parse_overrides(results.row_arguments("context", row, "out", [], 1))
    full, before, chosen = (trained(row) for row in ("full model", "party GRU without SCLM",
                                                      "party GRU without SCLM + party chain + context hidden 32"))
    assert (full["context_encoder"], full["sclm_mode"]) == ("gru", "utterance")          # the earliest demo preset
    assert (before["party_chain"], before["context_hidden"]) == (False, 0)               # the preset before the chain
    assert (chosen["context_encoder"], chosen["sclm_mode"], chosen["party_chain"], chosen["context_hidden"]) == \
        ("party_gru", "off", True, 32)                                                   # what config/demo.py holds now


def test_an_iemocap_preset_row_means_the_preset_it_was_measured_with_whatever_config_iemocap_holds_now():
    def trained(row):
        return train_MALN.parse_overrides(results.row_arguments("iemocap_text", row, "out", [], 1))
    earlier, chained = trained("IEMOCAP preset (--preset=IEMOCAP)"), trained("IEMOCAP preset + party chain")
    assert (earlier["average_decay"], earlier["party_chain"]) == (0.95, False)
    assert (chained["average_decay"], chained["party_chain"]) == (0.95, True)             # what config/iemocap.py holds now


def test_the_chained_baseline_reads_a_persisting_emotion_that_single_utterances_cannot():
    feature_set = make_demo(0, n_dialogues=(60, 20, 30), switch=0.05, signal=0.6, speaker_scale=0.0)  # weak, persisting
    single, _ = baselines.logistic_regression_baseline(feature_set)
    chained, per_class, stay = baselines.chained_logistic_regression_baseline(feature_set)
    assert chained > single + 10 and stay >= 0.8 and set(per_class) == set(feature_set.class_names)
