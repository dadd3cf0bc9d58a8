"""--predict across class sets and modalities: a file whose labelled classes the checkpoint does not have is
refused (unless --class_map names them), and a --modalities the checkpoint cannot honour is refused, not
ignored; each in one line."""

from dataclasses import replace

import pandas as pd
import pytest

from training import predict
import train_MALN
from test_hostile import finished_run, run_copy, tiny_demo  # noqa: F401 (fixtures)


def renamed(names):
    return lambda *args, **kwargs: replace(tiny_demo(), class_names=names)


def predict_with(run_copy, tmp_path, *options):
    train_MALN.main([f"--predict={run_copy / 'best.pt'}", f"--predictions={tmp_path / 'p.csv'}", *options])


def test_a_file_of_other_classes_is_refused_not_scored_at_zero(run_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "load_dataset", renamed(["neutral", "anger", "sadness", "joy"]))
    with pytest.raises(SystemExit, match=r"^error: demo: its classes neutral, anger, sadness, joy are not among the "
                                         r"checkpoint's \(happy, angry, sad, calm\).*--class_map=file_class:checkpoint_class"):
        predict_with(run_copy, tmp_path)
    assert not (tmp_path / "p.csv").exists()


def test_class_map_names_the_checkpoint_class_of_each_file_class(run_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict, "load_dataset", renamed(["neutral", "anger", "sad", "joy"]))
    with pytest.raises(SystemExit, match=r"^error: --class_map=joy:glee: 'joy:glee' must be file_class:checkpoint_class"):
        predict_with(run_copy, tmp_path, "--class_map=joy:glee")
    with pytest.raises(SystemExit, match=r"^error: --class_map=fear:sad: demo has no class 'fear'"):
        predict_with(run_copy, tmp_path, "--class_map=fear:sad")
    predict_with(run_copy, tmp_path, "--class_map=neutral:happy,anger:angry,joy:calm")
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert set(table["label"]) <= {"happy", "angry", "sad", "calm", ""}
    baseline = tmp_path / "plain"
    baseline.mkdir()
    monkeypatch.setattr(predict, "load_dataset", lambda *args, **kwargs: tiny_demo())
    predict_with(run_copy, baseline)
    plain = pd.read_csv(baseline / "p.csv", keep_default_na=False)
    assert table["label"].tolist() == plain["label"].tolist()


def test_the_same_classes_in_another_order_are_compared_by_name(run_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "load_dataset", renamed(["calm", "sad", "angry", "happy"]))
    predict_with(run_copy, tmp_path)
    assert (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("modalities", ["t", "ta", "av"])
def test_modalities_a_checkpoint_cannot_honour_are_refused_not_ignored(run_copy, tmp_path, modalities):
    with pytest.raises(SystemExit, match=rf"^error: --modalities={modalities}: .*best.pt was trained on the modalities tav "
                                         rf"and predicts from all of them; leave --modalities out with --predict"):
        predict_with(run_copy, tmp_path, f"--modalities={modalities}")
    predict_with(run_copy, tmp_path, "--modalities=vat")
