"""Bad input stops with one clear message; interrupted runs resume exactly; padding and
unlabelled utterances never produce NaN."""

import errno
import os
import pickle
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st

import layouts
from training import run_files
import train_MALN
from conftest import DEMO_SETTINGS
from dataloader import CLASS_NAMES, DataError, Dialogue, collate, load_dataset, load_features, make_demo
from MALN_model_fix import MALN, MALNConfig
from maln.files import OutputError, load_checkpoint, save_checkpoint


# ----------------------------------------------------------------------------- malformed feature files

def drop_last_utterance(stream):
    def apply(data):
        data[stream]["dia0"] = data[stream]["dia0"][:-1]
    return apply


def set_value(field, dialogue_id, utterance, value):
    def apply(data):
        data[field][dialogue_id][utterance] = value
    return apply


def empty_dialogue(data):
    for field in (1, 2, 3, 4, 5):
        data[field]["dia3"] = []


def smaller_text_vectors(data):
    data[3]["dia4"] = [x[:99] for x in data[3]["dia4"]]


def unknown_test_id(data):
    data[8] = list(data[8]) + ["dia99"]


def train_id_in_valid(data):
    data[9] = list(data[9]) + [data[7][0]]


def remove(index):
    def apply(data):
        del data[index]
    return apply


def speakers_as_a_list(data):
    data[1] = list(data[1].values())


def add_test_id(dialogue_id, copied_from="dia9"):
    def apply(data):
        for field in range(6):
            data[field][dialogue_id] = data[field][copied_from]
        data[8] = list(data[8]) + [dialogue_id]
    return apply


def ids_1_and_text_1(data):
    add_test_id(1, "dia9")(data)
    add_test_id("1", "dia10")(data)


MALFORMED = {  # case -> (writer, how the file is broken, what the message says)
    "text_shorter_than_speakers": (layouts.dialoguernn_iemocap, drop_last_utterance(3),
                                   r"dialogue 'dia0': modality 't' has shape \((\d+), 100\), expected \(\d+, D\) for its \d+ speakers"),
    "fewer_labels_than_speakers": (layouts.dialoguernn_iemocap, drop_last_utterance(2),
                                   r"dialogue 'dia0': \d+ labels for \d+ utterances"),
    "nan_in_audio": (layouts.dialoguernn_iemocap, set_value(4, "dia1", 2, np.full(100, np.nan, np.float32)),
                     r"dialogue 'dia1': modality 'a' contains NaN or inf \(utterances \[2\]\)"),
    "inf_in_a_roberta_vector": (layouts.cosmic_iemocap, set_value(4, "dia1", 0, np.full(1024, np.inf, np.float32)),
                                r"dialogue 'dia1': modality 't' contains NaN or inf \(utterances \[0\]\)"),
    "label_outside_the_classes": (layouts.dialoguernn_iemocap, set_value(2, "dia2", 0, 6),
                                  r"dialogue 'dia2': label 6 is outside the 6 classes"),
    "label_not_a_number": (layouts.dialoguernn_iemocap, set_value(2, "dia2", 1, "hap"),
                           r"dialogue 'dia2': label 'hap' is outside the 6 classes"),
    "empty_dialogue": (layouts.dialoguernn_iemocap, empty_dialogue, r"dialogue 'dia3': has no utterances"),
    "feature_size_differs_between_dialogues": (layouts.dialoguernn_iemocap, smaller_text_vectors,
                                               r"dialogue 'dia4': modality 't' has 99 features per utterance, dialogue 'dia\d' has 100"),
    "split_id_missing_from_the_features": (layouts.dialoguernn_iemocap, unknown_test_id,
                                           r"test dialogue 'dia99' has no 'speakers'"),
    "dialogue_in_two_splits": (layouts.cosmic_iemocap, train_id_in_valid,
                               r"dialogue 'dia0' is in the train split and again in the valid split"),
    "roberta_vectors_disagree": (layouts.cosmic_iemocap, drop_last_utterance(3),
                                 r"dialogue 'dia0': field 'roberta2' has shape \(\d+, 1024\), field 'roberta1' has"),
    "tuple_of_8": (layouts.dialoguernn_iemocap, remove(6), r"a tuple of 8 elements matches no known layout; known layouts: "
                                                           r"dialoguernn-iemocap \(9\).*cosmic-meld \(11\)"),
    "tuple_of_9_of_no_layout": (layouts.cosmic_iemocap, remove(5), r"a tuple of 9 elements matches no known layout; of 9 "
                                                                   r"elements: dialoguernn-iemocap \(9: utterance ids, speakers"),
    "field_of_the_wrong_type": (layouts.dialoguernn_iemocap, speakers_as_a_list,
                                r"field 'speakers' \(element 1 of the dialoguernn-iemocap tuple\) is a list, expected a dict"),
    "huge_finite_values": (layouts.dialoguernn_iemocap, set_value(4, "dia1", 2, np.full(100, 3e38, np.float32)),
                           r"dialogue 'dia1': modality 'a' has values beyond ±1e\+15 \(utterance 2: 3e\+38\)"),
    "zero_width_features": (layouts.dialoguernn_iemocap, lambda data: data[4].update(dia1=np.zeros((len(data[1]["dia1"]), 0))),
                            r"dialogue 'dia1': modality 'a' has shape \(\d+, 0\): no feature columns"),
    "unhashable_split_id": (layouts.dialoguernn_iemocap, lambda data: data.__setitem__(8, list(data[8]) + [["dia1"]]),
                            r"the test split lists \"\['dia1'\]\", a list, which cannot be a dialogue id"),
    "ids_1_and_text_1": (layouts.dialoguernn_iemocap, ids_1_and_text_1,
                         r"dialogue ids 1 \(int\) and '1' \(str\) are different ids that read the same as text"),
    "speakers_not_a_list": (layouts.dialoguernn_iemocap, lambda data: data[1].update(dia2=7),
                            r"dialogue 'dia2': speakers and labels must be lists, got int and list"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_file_stops_with_one_message_naming_file_dialogue_and_field(tmp_path, case):
    writer, breaks, message = MALFORMED[case]
    path = tmp_path / "broken.pkl"
    writer(str(path))
    data = list(pickle.loads(path.read_bytes()))
    breaks(data)
    path.write_bytes(pickle.dumps(tuple(data), protocol=2))
    with pytest.raises(DataError, match=r"broken\.pkl.*" + message) as error:
        load_features(str(path))
    assert error.value.__cause__ is None and (error.value.__context__ is None or error.value.__suppress_context__)


def test_an_unlabelled_utterance_is_kept_with_label_minus_one(tmp_path):
    path = tmp_path / "partly_labelled.pkl"
    layouts.dialoguernn_iemocap(str(path))
    data = list(pickle.loads(path.read_bytes()))
    data[2]["dia0"][0] = None
    path.write_bytes(pickle.dumps(tuple(data)))
    dialogue = next(d for split in load_features(str(path)).splits.values() for d in split if d.dialogue_id == "dia0")
    assert dialogue.labels[0] == -1 and (dialogue.labels[1:] >= 0).all()


def test_a_feature_file_without_dataset_takes_the_classes_of_its_layout(tmp_path):
    path = tmp_path / "cosmic.pkl"
    layouts.cosmic_iemocap(str(path))
    assert load_dataset("demo", features=str(path)).class_names == CLASS_NAMES["IEMOCAP"]


# ----------------------------------------------------------------------------- command line

@pytest.mark.parametrize("argument, message", [
    ("--epochs=0", "--epochs=0: must be >= 1"),
    ("--batch_size=-4", "--batch_size=-4: must be >= 1"),
    ("--dropout=1.0", r"--dropout=1.0: must be a number in \[0, 1\)"),
    ("--common_dropout=-0.1", r"--common_dropout=-0.1: must be a number in \[0, 1\)"),
    ("--learning_rate=0", "--learning_rate=0.0: must be > 0"),
    ("--learning_rate=nan", "--learning_rate=nan: must be > 0"),
    ("--valid_fraction=1", r"--valid_fraction=1.0: must be in \(0, 1\)"),
    ("--modalities=tx", "--modalities=tx: must be a subset of 'tav'"),
    ("--modalities=tt", "--modalities=tt: must be a subset of 'tav', each letter once"),
    ("--sclm_mode=speakers", "--sclm_mode=speakers: must be 'speaker', 'utterance', 'release' or 'off'"),
    ("--cross_input=both", "--cross_input=both: must be 'common' or 'specific'"),
    ("--cross_heads=3", "--cross_heads=3: must be a whole number >= 1 that divides hidden_size"),
    ("--device=gpu0", "--device=gpu0: must be 'auto', 'cpu', or an available"),
    ("--seeds=1,two", "--seeds=1,two: must be comma-separated integers"),
    ("--threads=-1", r"--threads=-1: must be >= 0 \(0 = torch's default\)"),
    ("--dataset=iemocap", "--dataset=iemocap: must be 'IEMOCAP', 'MELD' or 'demo'"),
])
def test_out_of_range_hyperparameter_is_refused_before_training(argument, message):
    with pytest.raises(SystemExit, match=message):
        train_MALN.parse_overrides([argument])


def test_a_model_setting_out_of_its_rule_stops_before_the_data_is_read_in_one_line_naming_it(monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: pytest.fail("loaded the data"))
    with pytest.raises(SystemExit, match=r"^--dropout=2.0: must be a number in \[0, 1\)$"):
        train_MALN.main(["--dropout=2"])


def test_a_directory_given_as_features_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=f"^error: {tmp_path}: is a directory, not a feature file$"):
        train_MALN.main([f"--features={tmp_path}", f"--out_dir={tmp_path}"])


class Planted:
    """A pickle payload: unpickling it writes a marker file (the stand-in for running any code)."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_run_folder_cannot_make_resume_unpickle_code(tmp_path, monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    train_MALN.main(arguments(tmp_path, "run", epochs=1))
    monkeypatch.undo()
    marker, planted = tmp_path / "code-ran", tmp_path / "planted.pkl"
    planted.write_bytes(pickle.dumps(Planted(str(marker))))
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    save_checkpoint({**last, "config": {**last["config"], "trust_pickle": True, "features": str(planted),
                                        "dataset": "IEMOCAP"}}, tmp_path / "run" / "last.pt")
    with pytest.raises(SystemExit, match=r"^error: .*planted.pkl: .*not a plain feature file"):
        train_MALN.main([f"--resume={tmp_path / 'run'}"])
    assert not marker.exists()


def test_resume_refuses_settings_other_than_device_epochs_and_threads(tmp_path):
    with pytest.raises(SystemExit, match="only --device, --epochs, --threads and --trust_pickle may be given with it, not --learning_rate"):
        train_MALN.main([f"--resume={tmp_path}", "--learning_rate=1e-3"])
    with pytest.raises(SystemExit, match="cannot resume: checkpoint not found: .*missing/last.pt"):
        train_MALN.main([f"--resume={tmp_path / 'missing'}"])
    with pytest.raises(SystemExit, match="cannot resume: .* holds no last.pt: no epoch of that run finished"):
        train_MALN.main([f"--resume={tmp_path}"])


# ----------------------------------------------------------------------------- interrupted runs

def tiny_demo():
    return make_demo(0, n_dialogues=(16, 4, 4))


def arguments(tmp_path, run_name, epochs=3, device="cpu"):
    return [*DEMO_SETTINGS, f"--out_dir={tmp_path}", f"--run_name={run_name}", f"--epochs={epochs}", "--batch_size=8",
            "--export_features=False", f"--device={device}"]


def interrupt_training_at_epoch(monkeypatch, epoch):
    """train_epoch raises KeyboardInterrupt (Ctrl-C) on its epoch-th call."""
    train_epoch, calls = train_MALN.train_epoch, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return train_epoch(*args)

    monkeypatch.setattr(train_MALN, "train_epoch", interrupted)


def approximately(value, tolerance):
    """value with each float in it (nested dicts too, e.g. the probes) compared within tolerance."""
    if isinstance(value, float):
        return pytest.approx(value, rel=tolerance, abs=tolerance)
    if isinstance(value, dict):
        return {k: approximately(v, tolerance) for k, v in value.items()}
    return value


def without_timings(metrics):  # and without the settings, which name the run
    return {k: v for k, v in metrics.items() if k not in ("seconds", "seconds_per_epoch", "config", "settings_changed")}


@pytest.mark.parametrize("averaging", [[], ["--average_decay=0.8"]], ids=["trained weights", "moving average"])
def test_resumed_run_ends_with_the_metrics_of_an_uninterrupted_run(tmp_path, monkeypatch, device, deterministic, averaging):
    feature_set = tiny_demo()
    whole = train_MALN.run(train_MALN.parse_overrides(arguments(tmp_path, "whole", device=device) + averaging), feature_set)
    interrupt_training_at_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train_MALN.run(train_MALN.parse_overrides(arguments(tmp_path, "cut", device=device) + averaging), feature_set)
    last = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert last["epoch"] == 2 and ("cuda" in last["rng"]) == (device == "cuda")
    monkeypatch.undo()
    resumed = train_MALN.run(train_MALN.parse_overrides([f"--resume={tmp_path / 'cut'}", *arguments(tmp_path, "cut", device=device),
                                                         *averaging]), feature_set)
    tolerance = 0.0 if device == "cpu" else 1e-4  # cuda: atomic adds in backward passes may order float sums differently
    resumed, whole = without_timings(resumed), without_timings(whole)
    assert resumed.keys() == whole.keys()
    differing = [k for k in whole if resumed[k] != approximately(whole[k], tolerance)]
    assert differing == []
    history = [pd.read_csv(tmp_path / name / "history.csv").drop(columns="seconds") for name in ("whole", "cut")]
    pd.testing.assert_frame_equal(*history)
    loaded = [MALN.from_checkpoint(str(tmp_path / name / "best.pt")).state_dict() for name in ("whole", "cut")]
    assert all(torch.allclose(loaded[0][k], loaded[1][k], rtol=0, atol=tolerance) for k in loaded[0])


def test_ctrl_c_exits_with_a_short_message_and_the_run_resumes_from_the_command_line_clearing_stale_temporaries(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    train_epoch = train_MALN.train_epoch
    interrupt_training_at_epoch(monkeypatch, 2)
    with pytest.raises(SystemExit) as stop:
        train_MALN.main(arguments(tmp_path, "run", epochs=3))
    assert stop.value.code == 130
    message = capsys.readouterr().err.strip()
    assert message == (f"interrupted: {tmp_path / 'run' / 'last.pt'} holds the last finished epoch; continue with: "
                       f"python train_MALN.py --resume={tmp_path / 'run'}")
    monkeypatch.setattr(train_MALN, "train_epoch", train_epoch)
    (tmp_path / "run" / ".tmp-abc123last.pt").write_bytes(b"left by a killed write")
    train_MALN.main([f"--resume={tmp_path / 'run'}"])
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert not [name for name in os.listdir(tmp_path / "run") if name.startswith(".tmp-")]
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 3 and os.path.exists(tmp_path / "run" / "metrics.json")


def test_non_finite_loss_stops_naming_epoch_and_batch_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    forward, training_calls = MALN.forward, []

    def diverging(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        if self.training:
            training_calls.append(1)
            if len(training_calls) == 4:  # epoch 2, batch 2 of 2
                output["losses"]["total"] = output["losses"]["total"] * float("nan")
        return output

    monkeypatch.setattr(MALN, "forward", diverging)
    with pytest.raises(SystemExit, match=r"error: epoch 2, batch 2 of 2: the training loss is nan\. Stopped; .*last\.pt "
                                         r"holds epoch 1, the last good one\. Resuming would meet the same loss: .*lower "
                                         r"--learning_rate \(this one: 0.002\), or check the features") as stop:
        train_MALN.main(arguments(tmp_path, "run", epochs=3))
    assert "--resume" not in str(stop.value)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(x).all() for x in last["model"].values())


def test_reusing_a_run_name_is_refused_before_loading_and_the_finished_run_is_untouched(tmp_path, monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    train_MALN.main(arguments(tmp_path, "run", epochs=1))
    before = {name: (tmp_path / "run" / name).read_bytes() for name in os.listdir(tmp_path / "run")}
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: pytest.fail("loaded the data"))
    with pytest.raises(SystemExit, match=f"^error: {tmp_path / 'run'} exists: a run's directory is never overwritten; "
                                         f"continue that run with --resume={tmp_path / 'run'}, or choose another --run_name$"):
        train_MALN.main([*arguments(tmp_path, "run", epochs=1), "--learning_rate=0.01"])
    with pytest.raises(OutputError, match="run exists"):  # run() itself, called with the data, refuses too
        train_MALN.run(train_MALN.parse_overrides(arguments(tmp_path, "run", epochs=1)), tiny_demo())
    assert {name: (tmp_path / "run" / name).read_bytes() for name in os.listdir(tmp_path / "run")} == before


def test_default_run_names_started_in_the_same_second_never_collide(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda format: "20250101-120000")
    config = train_MALN.parse_overrides([f"--out_dir={tmp_path}"])
    names = [run_files.claim_run_directory(config)["run_name"] for _ in range(3)]
    assert names == ["demo_all_20250101-120000", "demo_all_20250101-120000-2", "demo_all_20250101-120000-3"]
    assert sorted(os.listdir(tmp_path)) == names


def test_an_out_dir_that_is_a_file_or_unwritable_is_refused_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: pytest.fail("loaded the data"))
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=f"^error: --out_dir: {tmp_path / 'file'} is a file, not a directory"):
        train_MALN.main(arguments(tmp_path / "file", "run"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(SystemExit, match=f"^error: --out_dir: {tmp_path} is not writable$"):
        train_MALN.main(arguments(tmp_path / "new", "run"))


def test_a_full_disk_during_training_stops_with_one_line_and_the_run_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    save, calls = torch.save, []

    def disk_full_at_the_third_save(checkpoint, file):
        calls.append(1)
        if len(calls) == 3:  # epoch 2's last.pt (epoch 1 wrote last.pt and best.pt)
            file.write(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(checkpoint, file)

    monkeypatch.setattr(torch, "save", disk_full_at_the_third_save)
    with pytest.raises(SystemExit, match=f"^error: cannot write {tmp_path / 'run' / 'last.pt'}: No space left on device. "
                                         f"Stopped; .*last.pt holds the last finished epoch; continue with: python "
                                         f"train_MALN.py --resume={tmp_path / 'run'}$"):
        train_MALN.main(arguments(tmp_path, "run", epochs=3))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert not [name for name in os.listdir(tmp_path / "run") if name.startswith(".tmp-")]


def test_resume_of_a_wrong_or_corrupted_checkpoint_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    train_MALN.main(arguments(tmp_path, "run", epochs=2))
    run = tmp_path / "run"
    last = load_checkpoint(run / "last.pt")
    save_checkpoint({**last, "best": last["history"][0]}, run / "last.pt")  # best epoch 1: resuming reads best.pt
    (run / "best.pt").write_bytes(b"garbage")
    with pytest.raises(SystemExit, match=r"^error: .*best.pt: not a MALN checkpoint that loads safely \(.*\)$"):
        train_MALN.main([f"--resume={run}"])
    shutil.copy(run / "last.pt", run / "best.pt")
    save_checkpoint({k: last[k] for k in ("model", "model_args", "config", "class_names", "epoch")}, run / "last.pt")
    with pytest.raises(SystemExit, match=r"^error: cannot resume: .*last.pt: not a checkpoint of the kind needed here: "
                                         r"it has no optimizer, history, best, rng \(best.pt has no optimizer state"):
        train_MALN.main([f"--resume={run}"])
    save_checkpoint({**last, "config": {**last["config"], "learning_rate": "fast"}}, run / "last.pt")
    with pytest.raises(SystemExit, match=r"^error: cannot resume: .*last.pt: its saved setting learning_rate='fast' is not a float$"):
        train_MALN.main([f"--resume={run}"])


# ----------------------------------------------------------------------------- padding and masks

SIZES = {"t": 6, "a": 4, "v": 5}
MODELS = {mode: MALN(MALNConfig(feature_sizes=SIZES, n_classes=3, hidden_size=8, speaker_size=4, cross_heads=2,
                                discriminator_hidden=4, sclm_mode=mode)).eval()
          for mode in ("speaker", "release", "off")}


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4), parties=st.integers(1, 6),
       labelled=st.floats(0, 1), mode=st.sampled_from(sorted(MODELS)), seed=st.integers(0, 2 ** 16))
def test_any_lengths_speakers_and_label_masks_give_finite_outputs_and_padding_changes_nothing(lengths, parties, labelled,
                                                                                             mode, seed):
    generator = torch.Generator().manual_seed(seed)
    dialogues = [Dialogue(f"d{i}", {m: torch.randn(n, d, generator=generator) for m, d in SIZES.items()},
                          torch.randint(0, parties, (n,), generator=generator),
                          torch.where(torch.rand(n, generator=generator) < labelled, torch.randint(0, 3, (n,), generator=generator), -1))
                 for i, n in enumerate(lengths)]
    model = MODELS[mode]
    batch = collate(dialogues)
    assert all(torch.isfinite(x).all() for x in batch["features"].values())
    output = model(batch)
    assert torch.isfinite(output["log_probs"]).all() and torch.isfinite(output["fused"]).all()
    assert all(torch.isfinite(loss) for loss in output["losses"].values())
    for i, d in enumerate(dialogues):
        alone = collate([d])
        single = model({**alone, "labels": None})
        assert torch.allclose(single["log_probs"][0], output["log_probs"][i, :len(d)], atol=1e-5)
