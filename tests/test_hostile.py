"""A run folder, checkpoint or release file passed on by someone else never runs code, blocks, exhausts
memory, corrupts memory or gives a silent wrong result: each such case is one line naming the file."""

import json
import os
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import plots
from training import predict
from training import run_files
import train_MALN
from conftest import DEMO_SETTINGS
from maln import files
from dataloader import DataError, make_demo
from MALN_model_fix import MALN, MALNConfig
from maln.release_keys import RELEASE_MODALITY_INDEX, release_key, release_prefixes
from maln.files import load_checkpoint, save_checkpoint
from benchmarks import baselines
from benchmarks import results


def tiny_demo():
    return make_demo(0, n_dialogues=(16, 4, 4))


def arguments(directory, run_name, epochs=1, export=False):
    return [*DEMO_SETTINGS, f"--out_dir={directory}", f"--run_name={run_name}", f"--epochs={epochs}", "--batch_size=8",
            f"--export_features={export}", "--device=cpu", "--lr_schedule=constant"]  # constant: --resume may add epochs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run of one epoch on a tiny demo set, trained once; tests copy it."""
    directory = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
        train_MALN.main(arguments(directory, "run"))
    return directory / "run"


@pytest.fixture
def run_copy(finished_run, tmp_path, monkeypatch):
    """A copy of the finished run to tamper with; training, resuming and predicting read the tiny demo set."""
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    monkeypatch.setattr(predict, "load_dataset", lambda *args, **kwargs: tiny_demo())
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


def one_line(stop):
    assert "\n" not in str(stop.value) and "Traceback" not in str(stop.value)


# ----------------------------------------------------------------------------- files that are not regular files

@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_fifo_directory_or_device_where_a_checkpoint_is_expected_is_one_line_and_never_blocks(run_copy, tmp_path, kind,
                                                                                                  no_hang):
    def plant(path):
        path.unlink(missing_ok=True)
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "directory":
            path.mkdir()
        else:
            path.symlink_to("/dev/zero")
    expected = {"fifo": r"a FIFO \(named pipe\)", "directory": "a directory", "device": "a character device"}[kind]
    plant(tmp_path / "release.pt")
    with pytest.raises(SystemExit, match=f"release.pt: is {expected}, not a checkpoint$") as stop:
        train_MALN.main([f"--from_release={tmp_path / 'release.pt'}", f"--out_dir={tmp_path}", "--run_name=converted"])
    one_line(stop)
    plant(run_copy / "best.pt")
    with pytest.raises(SystemExit, match=f"best.pt: is {expected}, not a checkpoint$"):
        train_MALN.main([f"--predict={run_copy / 'best.pt'}", f"--predictions={tmp_path / 'p.csv'}"])
    plant(run_copy / "last.pt")
    with pytest.raises(SystemExit, match=f"last.pt: is {expected}, not a checkpoint$"):
        train_MALN.main([f"--resume={run_copy}", "--epochs=2"])


def test_a_fifo_or_directory_in_a_run_folder_stops_plots_with_one_line(run_copy, no_hang):
    os.remove(run_copy / "metrics.json")
    os.mkfifo(run_copy / "metrics.json")
    with pytest.raises(SystemExit, match=r"^error: .*metrics.json: is a FIFO \(named pipe\), not a metrics.json$"):
        plots.main([str(run_copy)])
    os.remove(run_copy / "metrics.json")
    (run_copy / "history.csv").unlink()
    (run_copy / "history.csv").mkdir()
    with pytest.raises(SystemExit, match=r"^error: .*history.csv: is a directory, not a history.csv$"):
        plots.main([str(run_copy)])


# ----------------------------------------------------------------------------- sizes a file claims

def test_a_tensor_claiming_more_than_its_storage_is_refused_before_anything_copies_it(tmp_path):
    torch.save({"model": {"weight": torch.zeros(1).expand(2 ** 40)}}, tmp_path / "claims.pt")  # 4 TiB on 4 bytes
    with pytest.raises(ValueError, match=r"claims.pt: the tensor model/weight claims shape \(1099511627776,\) and "
                                         r"strides \(0,\) \(4,096.0 GiB\) on a storage of 0.00 MiB; refused"):
        load_checkpoint(tmp_path / "claims.pt")
    torch.save({"model": {"weight": torch.zeros(4)}}, tmp_path / "honest.pt")
    assert load_checkpoint(tmp_path / "honest.pt")["model"]["weight"].shape == (4,)


def test_tensors_sharing_one_storage_may_not_claim_more_than_the_budget_together(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "EXPANSION_FLOOR", 2 ** 20)
    storage = torch.zeros(2 ** 16)                                                 # 256 KiB
    torch.save({"model": {f"view{i}": storage[:] for i in range(32)}}, tmp_path / "views.pt")  # 32 x 256 KiB claimed
    with pytest.raises(ValueError, match=r"views.pt: its tensors claim more than 4.\d\d MiB in all"):
        load_checkpoint(tmp_path / "views.pt")


def small_model(**options):
    settings = {"hidden_size": 8, "speaker_size": 4, "cross_heads": 2, "discriminator_hidden": 4}
    return MALN(MALNConfig(feature_sizes={"t": 6, "a": 4}, n_classes=3, **{**settings, **options}))


def saved_like_train_MALN(model):
    return {"model": model.state_dict(), "model_args": model.model_args(), "class_names": ["a", "b", "c"], "epoch": 1}


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": 10 ** 6, "cross_heads": 1}, r"saved by a model of other settings or feature sizes"),
    ({"feature_sizes": {"t": 10 ** 7, "a": 4}}, r"saved by a model of other settings or feature sizes"),
    ({"sclm_heads": 4}, r"field 'model_args': attention over vectors of size 6 cannot have 4 heads \(they must divide it\)$"),
    ({"gru_layers": -1}, r"field 'model_args': gru_layers=-1: must be a whole number >= 1$"),
    ({"dropout": float("nan")}, r"field 'model_args': dropout=nan: must be a number in \[0, 1\)$"),
])
def test_model_args_are_checked_and_sized_before_the_model_is_allocated(tmp_path, change, message):
    checkpoint = saved_like_train_MALN(small_model())
    checkpoint["model_args"].update(change)
    save_checkpoint(checkpoint, tmp_path / "best.pt")
    with pytest.raises(SystemExit, match=r"^error: .*best.pt: " + message) as stop:
        train_MALN.main([f"--predict={tmp_path / 'best.pt'}", f"--predictions={tmp_path / 'p.csv'}"])
    one_line(stop)


def test_heads_that_do_not_divide_the_feature_size_stop_training_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    with pytest.raises(SystemExit, match=r"^error: attention over vectors of size 24 cannot have 7 heads"):
        train_MALN.main(arguments(tmp_path, "run") + ["--sclm_heads=7"])


# ----------------------------------------------------------------------------- last.pt and best.pt

def tamper(run_dir, change, name="last.pt"):
    checkpoint = load_checkpoint(run_dir / name)
    change(checkpoint)
    save_checkpoint(checkpoint, run_dir / name)


def first_moment(checkpoint):
    return checkpoint["optimizer"]["state"][0]


@pytest.mark.parametrize("change, message", [
    (lambda c: first_moment(c).update(exp_avg=torch.zeros(3)), r"state of parameter 0: exp_avg is \(3,\) torch.float32, "
                                                               r"the parameter \([\d, ]+\) torch.float32$"),
    (lambda c: [s.update(exp_avg_sq=torch.zeros(1)) for s in c["optimizer"]["state"].values()], r"exp_avg_sq is \(1,\)"),
    (lambda c: first_moment(c).update(exp_avg=first_moment(c)["exp_avg"].double()), r"exp_avg is .* torch.float64"),
    (lambda c: first_moment(c).update(step=torch.tensor([1.0, 2.0])), r"step must be one finite count >= 0"),
    (lambda c: first_moment(c).pop("exp_avg_sq"), r"must be the tensors step, exp_avg, exp_avg_sq$"),
    (lambda c: first_moment(c)["exp_avg"].fill_(float("nan")), r"its moments hold NaN or inf \(0.exp_avg\)"),
    (lambda c: c["optimizer"]["state"].update({10 ** 6: first_moment(c)}), r"holds a state for parameter 1000000, which "
                                                                            r"this model has not"),
    (lambda c: c["optimizer"]["param_groups"][0].update(weight_decay=-1.0), r"parameter group 0 has weight_decay=-1.0, "
                                                                            r"the run's settings give 3e-05$"),
    (lambda c: c["optimizer"]["param_groups"].append(c["optimizer"]["param_groups"][0]), r"has 2 parameter groups"),
])
def test_an_optimizer_state_that_does_not_fit_the_parameters_is_refused_before_fused_adam_uses_it(run_copy, change, message):
    tamper(run_copy, change)
    with pytest.raises(SystemExit, match=r"^error: .*last.pt: field 'optimizer'.*" + message) as stop:
        train_MALN.main([f"--resume={run_copy}", "--epochs=2"])
    one_line(stop)
    assert len(pd.read_csv(run_copy / "history.csv")) == 1                        # nothing trained


@pytest.mark.parametrize("change, message", [
    (lambda c: c["config"].update(epochs=0), r"its saved setting epochs=0 must be >= 1$"),
    (lambda c: c["config"].update(dropout=1.5), r"its saved setting dropout=1.5 must be a number in \[0, 1\)$"),
    (lambda c: c["config"].update(sclm_mode="evil"), r"its saved setting sclm_mode='evil' must be 'speaker', "),
    (lambda c: c["config"].update(hidden_size=10 ** 6, cross_heads=1), r"its saved setting hidden_size=1000000 is not the one "
                                                                          r"its model was built with \(field 'model_args': "
                                                                          r"hidden_size=100\)$"),
    (lambda c: c["model_args"].update(hidden_size=10 ** 6, cross_heads=1), r"saved by a model of other settings or feature"),
    (lambda c: c["config"].update(features="/dev/zero", dataset="IEMOCAP"), r"its saved setting features: /dev/zero: is a "
                                                                             r"character device, not a feature file$"),
    (lambda c: c["config"].update(av_features="/nowhere.pkl"), r"its saved setting av_features: feature file not found"),
    (lambda c: c.update(best={k: v for k, v in c["best"].items() if k != "valid_weighted_f1"}), r"field 'best' must be the best epoch's row, with the numbers epoch"),
    (lambda c: c["history"][0].pop("train_loss"), r"field 'history' must be a list of epoch rows, each with the numbers"),
    (lambda c: c["history"][0].update(epoch=5), r"field 'history' does not hold the epochs 1, 2, ... in order$"),
    (lambda c: c["model"][next(iter(c["model"]))].fill_(float("inf")), r"its weights hold NaN or inf"),
    (lambda c: c.update(class_names=["a"] * len(c["class_names"])), r"field 'class_names' repeats a class"),
])
def test_a_tampered_last_pt_is_named_by_file_and_field_not_by_a_flag_never_typed(run_copy, change, message):
    tamper(run_copy, change)
    epochs = [] if "epochs=0" in message else ["--epochs=2"]  # a saved setting the command line gives is its own
    with pytest.raises(SystemExit, match=r"^error: (cannot resume: )?.*last.pt: " + message) as stop:
        train_MALN.main([f"--resume={run_copy}", *epochs])
    one_line(stop)
    assert "--epochs=0" not in str(stop.value) and len(pd.read_csv(run_copy / "history.csv")) == 1


@pytest.mark.parametrize("change, message", [
    (lambda state: state.update({name: x.fill_(float("nan")) for name, x in list(state.items())[-1:]}),
     r"best.pt: its weights hold NaN or inf \(classifier.3.bias\)"),
    (lambda state: state.update({"classifier.3.bias": torch.zeros(9)}), r"best.pt: saved by a model of other settings"),
])
def test_a_tampered_best_pt_is_refused_when_resuming_not_after_the_last_epoch(tmp_path, monkeypatch, change, message):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    train_MALN.main(arguments(tmp_path, "run", epochs=2))
    run = tmp_path / "run"
    os.remove(run / "metrics.json")
    tamper(run, lambda c: c.update(best=c["history"][0]))                    # best epoch 1: resuming reads best.pt
    tamper(run, lambda c: (change(c["model"]), c.update(epoch=1)), "best.pt")
    monkeypatch.setattr(train_MALN, "train_epoch", lambda *args: pytest.fail("an epoch trained"))
    with pytest.raises(SystemExit, match=r"^error: .*" + message):
        train_MALN.main([f"--resume={run}", "--epochs=3"])


@pytest.mark.parametrize("setting, message", [
    ({"valid_fraction": 5.0}, r"best.pt: its saved setting valid_fraction=5.0 must be in \(0, 1\)$"),
    ({"split_seed": "x"}, r"best.pt: its saved setting split_seed='x' is not a int$"),
])
def test_predict_checks_the_hold_out_settings_a_checkpoint_saved_naming_the_file(run_copy, tmp_path, setting, message):
    tamper(run_copy, lambda c: c["config"].update(setting), "best.pt")
    with pytest.raises(SystemExit, match=r"^error: .*" + message):
        train_MALN.main([f"--predict={run_copy / 'best.pt'}", f"--predictions={tmp_path / 'p.csv'}"])
    assert not (tmp_path / "p.csv").exists()


def test_resume_with_fewer_epochs_than_trained_is_refused_and_the_finished_run_is_untouched(tmp_path, monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    train_MALN.main(arguments(tmp_path, "run", epochs=2))
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    with pytest.raises(SystemExit, match=r"^error: --epochs=1: the run to resume has finished 2 epochs already$"):
        train_MALN.main([f"--resume={tmp_path / 'run'}", "--epochs=1"])
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before


def test_a_run_folder_left_empty_by_an_interrupted_first_epoch_says_so_when_reused_and_resumed(tmp_path, monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    monkeypatch.setattr(train_MALN, "train_epoch", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit):
        train_MALN.main(arguments(tmp_path, "run"))
    assert os.listdir(tmp_path / "run") == []
    with pytest.raises(SystemExit, match=r"run exists, empty: a run stopped there before its first epoch finished, so "
                                         r"there is nothing to resume; remove it, or choose another --run_name$"):
        train_MALN.main(arguments(tmp_path, "run"))
    with pytest.raises(SystemExit, match=r"run holds no last.pt: no epoch of that run finished"):
        train_MALN.main([f"--resume={tmp_path / 'run'}"])


def test_a_refused_checkpoint_does_not_repeat_torchs_advice_to_load_it_unsafely(tmp_path):
    torch.save({"model": {}, "extra": print}, tmp_path / "code.pt")
    with pytest.raises(ValueError, match=r"code.pt: not a MALN checkpoint that loads safely \(UnpicklingError: .*print") as error:
        load_checkpoint(tmp_path / "code.pt")
    assert "weights_only" not in str(error.value)


# ----------------------------------------------------------------------------- release files

def release_like(model):
    """The state dict the authors' release would save for this model (sclm_mode='release', three modalities)."""
    prefixes, state = release_prefixes(), {}
    for key, value in model.state_dict().items():
        if key.endswith(".cls"):
            value = value.reshape(1, 1, -1)
        elif key.startswith("amdm.discriminator.3."):
            rows = torch.empty_like(value)
            rows[[RELEASE_MODALITY_INDEX[m] for m in model.config.modalities]] = value
            value = rows
        state[release_key(key, prefixes)] = value.clone()
    return state


@pytest.fixture
def release():
    model = MALN(MALNConfig(feature_sizes={"t": 6, "a": 4, "v": 5}, n_classes=3, hidden_size=8, speaker_size=4,
                            cross_heads=2, discriminator_hidden=4, sclm_mode="release"))
    return release_like(model)


def test_a_release_like_state_dict_converts(release, tmp_path):
    torch.save(release, tmp_path / "release.pt")
    assert MALN.from_release(str(tmp_path / "release.pt")).config.n_classes == 3


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"fc.3.weight": torch.tensor(1.0)}), r"'fc.3.weight' is of shape \(\), not a weight matrix\)$"),
    (lambda s: s.update({"TexGRU.gru.weight_hh_l0": torch.zeros(5)}), r"'TexGRU.gru.weight_hh_l0' is of shape \(5,\)"),
    (lambda s: s.update({"fc.3.bias": torch.zeros(4)}), r"saved by a model of other settings .*classifier.3.bias is \(4,\)"),
    (lambda s: s.update({"fc_text.3.weight": torch.zeros(5, 8)}), r"saved by a model of other settings"),
    (lambda s: s.update({"modal_discriminator.3.weight": torch.zeros(2, 4)}), r"the release's discriminator has one per "
                                                                               r"modality \(3\)"),
    (lambda s: s["fc.0.weight"].fill_(float("nan")), r"its weights hold NaN or inf \(classifier.0.weight\)"),
    (lambda s: s.update({"TextTopicFc.weight": torch.zeros(4, 10 ** 6)}), r"saved by a model of other settings"),
])
def test_a_release_file_that_cannot_be_the_releases_model_is_one_line(release, tmp_path, change, message):
    change(release)
    torch.save(release, tmp_path / "release.pt")
    with pytest.raises(SystemExit, match=r"^error: .*release.pt: .*" + message) as stop:
        train_MALN.main([f"--from_release={tmp_path / 'release.pt'}", f"--out_dir={tmp_path}", "--run_name=converted",
                         "--class_names=a,b,c"])
    one_line(stop)
    assert not (tmp_path / "converted").exists()


def test_release_class_names_that_repeat_are_refused(release, tmp_path):
    torch.save(release, tmp_path / "release.pt")
    with pytest.raises(SystemExit, match=r"^--class_names=a,a,b: names a class twice"):
        train_MALN.main([f"--from_release={tmp_path / 'release.pt'}", f"--out_dir={tmp_path}", "--class_names=a,a,b"])


# ----------------------------------------------------------------------------- predictions.csv

def test_predictions_csv_escapes_cells_a_spreadsheet_would_run_as_formulas(run_copy, tmp_path, monkeypatch):
    hostile = tiny_demo()
    cells = ["=HYPERLINK(\"http://x\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "plain"]
    for i, dialogue in enumerate(hostile.splits["test"]):
        dialogue.dialogue_id = cells[i % len(cells)] + str(i)
        dialogue.speaker_names = [cells[(i + j) % len(cells)] for j in range(len(dialogue))]
    monkeypatch.setattr(predict, "load_dataset", lambda *args, **kwargs: hostile)
    train_MALN.main([f"--predict={run_copy / 'best.pt'}", f"--predictions={tmp_path / 'p.csv'}", "--predict_split=test"])
    table = pd.read_csv(tmp_path / "p.csv", dtype=str, keep_default_na=False)
    for column in ("dialogue_id", "speaker"):
        assert not table[column].str.match(r"[=+\-@\t\r]").any()
        assert table[column].str.startswith("'").sum() > 0
    assert (table["speaker"] == "plain").any() and (table["speaker"] == "'=HYPERLINK(\"http://x\")").any()


# ----------------------------------------------------------------------------- plots.py

def damage(run_dir, name, content):
    path = run_dir / name
    if name.endswith(".npz"):
        np.savez(path, **content)
    else:
        path.write_text(content)


@pytest.mark.parametrize("name, content, message", [
    ("metrics.json", "[1, 2]", r"metrics.json: holds a list, not the dict train_MALN.py writes$"),
    ("metrics.json", '{"class_names": ["a", "b"]}', r"metrics.json: field 'best_epoch' must be an epoch number >= 1, got None$"),
    ("metrics.json", '{"best_epoch": 1, "class_names": ["a", "a"]}', r"field 'class_names' must be a list of distinct"),
    ("metrics.json", '{"best_epoch": 1, ', r"metrics.json: not JSON"),
    ("history.csv", "epoch,train_nll\n1,0.5\n", r"history.csv: has no column train_weighted_f1, valid_weighted_f1, "),
    ("history.csv", "epoch,train_nll,train_weighted_f1,valid_nll,valid_weighted_f1,test_nll,test_weighted_f1\n1,a,b,c,d,e,f\n",
     r"history.csv: column train_weighted_f1 holds values that are not numbers$"),
    ("features_test.npz", {"label": np.array([0, 1, 99]), "prediction": np.array([0, 1, 2]), "fused": np.zeros((3, 2))},
     r"features_test.npz: 'label' must hold one class index in \[-1, \d+\) per utterance$"),
    ("features_test.npz", {"label": np.array([0.5]), "prediction": np.array([0]), "fused": np.zeros((1, 2))},
     r"features_test.npz: 'label' must be a 1-d array of class indices$"),
    ("features_test.npz", {"label": np.array([0, 1]), "prediction": np.array([0, 1]), "fused": np.zeros((3, 2))},
     r"features_test.npz: 'fused' must be a 2-d float array of finite values with a row per utterance$"),
    ("features_test.npz", {"label": np.array([0, 1]), "prediction": np.array([0, 1]), "fused": np.full((2, 2), np.nan)},
     r"features_test.npz: 'fused' must be a 2-d float array of finite values"),
])
def test_plots_on_a_damaged_run_folder_is_one_line_naming_the_file(run_copy, name, content, message):
    damage(run_copy, name, content)
    with pytest.raises(SystemExit, match=r"^error: .*" + message) as stop:
        plots.main([str(run_copy)])
    one_line(stop)


def test_plots_never_writes_through_a_figures_symlink_nor_into_a_figures_file_nor_a_read_only_folder(run_copy, tmp_path,
                                                                                                    monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "learning_curves.png").write_text("someone's file")
    (run_copy / "figures").symlink_to(elsewhere)
    with pytest.raises(SystemExit, match=r"^error: plots.py: .*figures is a symbolic link \(to .*elsewhere\); nothing is "
                                         r"written through it: remove the link$"):
        plots.main([str(run_copy)])
    assert (elsewhere / "learning_curves.png").read_text() == "someone's file" and os.listdir(elsewhere) == ["learning_curves.png"]
    (run_copy / "figures").unlink()
    (run_copy / "figures").write_text("a file")
    with pytest.raises(SystemExit, match=r"^error: plots.py: .*figures is a file, not a directory"):
        plots.main([str(run_copy)])
    (run_copy / "figures").unlink()
    monkeypatch.setattr(files.os, "access", lambda path, mode: False)          # a read-only run folder (root may write anywhere)
    with pytest.raises(SystemExit, match=r"^error: plots.py: .*run is not writable$"):
        plots.main([str(run_copy)])


def many_class_run(directory, n_classes, n_utterances=12):
    rng = np.random.default_rng(0)
    directory.mkdir()
    names = [f"class{k}" for k in range(n_classes)]
    (directory / "metrics.json").write_text(json.dumps({"best_epoch": 1, "class_names": names}))
    labels = np.concatenate([np.zeros(4, int), rng.integers(0, n_classes, n_utterances - 4)])
    np.savez(directory / "features_test.npz", label=labels, prediction=rng.integers(0, n_classes, n_utterances),
             fused=rng.normal(size=(n_utterances, 3)), common_t=rng.normal(size=(n_utterances, 3)),
             specific_t=rng.normal(size=(n_utterances, 3)))
    return directory


def test_plots_of_many_classes_draw_the_most_frequent_one_by_one_and_say_what_was_left_out(tmp_path, capsys):
    run_dir = many_class_run(tmp_path / "run", 60)
    drawn, notes = plots.draw(plots.load_run(str(run_dir)))
    width, height = drawn["confusion_matrix.png"].get_size_inches()
    assert width <= 1.2 * (plots.MAX_CLASSES + 1) + 2.5 and height <= 1.0 * plots.MAX_CLASSES + 2
    assert any(f"draw the {plots.MAX_CLASSES} most frequent of the 60 classes" in note for note in notes)
    labels = [tick.get_text() for tick in drawn["confusion_matrix.png"].axes[0].get_yticklabels()]
    assert "class0" in labels and len(labels) == plots.MAX_CLASSES        # class0, the most frequent, is drawn
    assert drawn["confusion_matrix.png"].axes[0].get_xticklabels()[-1].get_text() == "other classes"


# ----------------------------------------------------------------------------- seeds and results.py

@pytest.mark.parametrize("seeds", ["", "1,1", "1,a", ",", "-1"])
def test_seeds_that_are_empty_repeated_or_not_numbers_are_refused_before_anything_runs(seeds, tmp_path, monkeypatch):
    monkeypatch.setattr(results, "run_side_by_side", lambda runs, jobs: pytest.fail(f"{len(runs)} runs started"))
    with pytest.raises(SystemExit, match=f"^--seeds={seeds}: must be comma-separated integers >= 0, each once"):
        results.main([f"--seeds={seeds}", "--run", f"--out_dir={tmp_path}"])
    assert not (tmp_path / "results").exists()
    if seeds:
        with pytest.raises(SystemExit, match=r"--seeds=.*: must be comma-separated integers >= 0, each once"):
            train_MALN.parse_overrides([f"--seeds={seeds}"])


def test_a_run_counts_as_finished_only_with_every_output_and_metrics_json_is_written_last(run_copy, tmp_path, monkeypatch):
    assert run_files.finished_metrics(run_copy)["best_epoch"] == 1
    (run_copy / "best.pt").unlink()
    assert run_files.finished_metrics(run_copy) is None
    savez, calls = np.savez, []

    def interrupted_at_the_second_export(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        savez(*args, **kwargs)

    monkeypatch.setattr(np, "savez", interrupted_at_the_second_export)
    with pytest.raises(SystemExit):
        train_MALN.main(arguments(tmp_path, "exported", export=True))
    assert not (tmp_path / "exported" / "metrics.json").exists()                 # Ctrl-C in the export: not finished
    assert run_files.finished_metrics(tmp_path / "exported") is None


def test_a_summary_is_written_only_for_rows_whose_seeds_all_finished(tmp_path, monkeypatch):
    seed_dir = os.path.join(results.run_dir(str(tmp_path), "demo", "full model"), "seed1")
    os.makedirs(seed_dir)
    metrics = {key: 50.0 for key in results.COLUMNS}
    json.dump({**metrics, "config": {"export_features": False}}, open(os.path.join(seed_dir, "metrics.json"), "w"))
    monkeypatch.setattr(results, "run_side_by_side", lambda runs, jobs: [])  # the seed "trains" without writing
    results.train_missing("demo", "1", str(tmp_path), [], ["full model"])
    assert not os.path.exists(os.path.join(results.run_dir(str(tmp_path), "demo", "full model"), "summary.json"))
    for name in ("last.pt", "best.pt", "history.csv"):
        open(os.path.join(seed_dir, name), "w").close()
    results.train_missing("demo", "1", str(tmp_path), [], ["full model"])
    summary = json.load(open(os.path.join(results.run_dir(str(tmp_path), "demo", "full model"), "summary.json")))
    assert summary["seeds"] == [1] and summary["test_weighted_f1"]["mean"] == 50.0


@pytest.mark.parametrize("content, message", [
    ("{not json", r"summary.json: does not read as JSON"),
    ("[]", r"summary.json: holds a list, not the dict"),
    ('{"seeds": [], "test_weighted_f1": null}', r"summary.json: not a summary of trained seeds"),
])
def test_a_damaged_summary_is_one_line_naming_it(tmp_path, content, message):
    directory = results.run_dir(str(tmp_path), "demo", "full model")
    os.makedirs(directory)
    open(os.path.join(directory, "summary.json"), "w").write(content)
    with pytest.raises(SystemExit, match=r"^error: .*" + message) as stop:
        results.main(["--suite=demo", f"--out_dir={tmp_path}"])
    one_line(stop)


def test_probe_figures_that_are_not_numbers_are_not_tabulated(tmp_path):
    seed_dir = os.path.join(results.run_dir(str(tmp_path), "decomposition", "full model"), "seed1")
    os.makedirs(seed_dir)
    json.dump({"decomposition": {key: "=cmd" for key in results.PROBE_COLUMNS}}, open(os.path.join(seed_dir, "metrics.json"), "w"))
    frame = results.decomposition_table("decomposition", str(tmp_path))
    assert (frame.drop(columns=["setting", "seeds"]) == "n/a").all().all()


def test_a_damaged_metrics_json_of_a_seed_is_one_line(tmp_path):
    seed_dir = os.path.join(results.run_dir(str(tmp_path), "demo", "full model"), "seed1")
    os.makedirs(seed_dir)
    open(os.path.join(seed_dir, "metrics.json"), "w").write("{half")
    with pytest.raises(SystemExit, match=r"^error: .*seed1.metrics.json: not a metrics.json that reads"):
        results.train_missing("demo", "1", str(tmp_path), [], ["full model"])


def test_a_seed_log_that_is_a_symlink_or_a_fifo_is_never_written_through_nor_waited_on(tmp_path, no_hang):
    target = tmp_path / "someones_file"
    target.write_text("kept")
    (tmp_path / "seed1.log").symlink_to(target)
    os.mkfifo(tmp_path / "seed2.log")
    runs = [(f"row seed {seed}", [sys.executable, "-c", "print('x')"], str(tmp_path / f"seed{seed}")) for seed in (1, 2)]
    failures = sorted(results.run_side_by_side(runs, 1))
    assert len(failures) == 2 and "seed1.log (" in failures[0] and "symbolic link" in failures[0]
    assert "cannot write its log" in failures[1] and "seed2.log" in failures[1]
    assert target.read_text() == "kept"


# ----------------------------------------------------------------------------- baselines.py

def test_baselines_refuse_an_unlabelled_test_split_and_training_data_of_one_class():
    feature_set = tiny_demo()
    for dialogue in feature_set.splits["test"]:
        dialogue.labels[:] = -1
    with pytest.raises(DataError, match=r"demo: the test split has no labelled utterance"):
        baselines.logistic_regression_baseline(feature_set)
    feature_set = tiny_demo()
    for split in ("train", "valid"):
        for dialogue in feature_set.splits[split]:
            dialogue.labels[:] = 2
    with pytest.raises(DataError, match=r"demo: the labelled utterances of train and valid hold 1 class\(es\)"):
        baselines.logistic_regression_baseline(feature_set)


def test_baselines_accept_the_trust_pickle_switch_their_messages_advise(tmp_path, capsys):
    import layouts
    layouts.dialoguernn_iemocap(str(tmp_path / "features.pkl"))
    baselines.main([f"--features={tmp_path / 'features.pkl'}", "--dataset=IEMOCAP", "--trust_pickle=True"])
    assert "logistic regression, single utterances" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="usage"):
        baselines.main([f"--features={tmp_path / 'features.pkl'}", "--trust_pickle=maybe"])
