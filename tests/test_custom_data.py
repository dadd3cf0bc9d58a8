import json
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import layouts
from conftest import ROOT
from training import predict
from extraction import table_features
import train_MALN
from dataloader import CLASS_NAMES, SPLITS, DataError, load_dataset, load_features, make_batches, split_validation
from MALN_model_fix import MALN
from extraction.table_features import build_features

CLASSES = ["angry", "calm", "happy"]
TINY = ["--hidden_size=16", "--speaker_size=8", "--discriminator_hidden=8",
        "--sclm_feedforward=16", "--batch_size=4", "--export_features=False"]


def utterances(n_dialogues=(8, 2, 3), seed=0):
    """A table of utterances in shuffled row order (every fifth unlabelled), and text / audio
    arrays in that row order; the text carries the label."""
    rng = np.random.default_rng(seed)
    splits = [split for split, count in zip(SPLITS, n_dialogues) for _ in range(count)]
    rows = [{"dialogue_id": f"call{d}", "position": p, "speaker": ["Ann", "Bob", "Cem"][(d + p) % 3],
             "label": CLASSES[rng.integers(3)] if (d + p) % 5 else "", "split": split}
            for d, split in enumerate(splits) for p in range(int(rng.integers(3, 7)))]
    table = pd.DataFrame(rows).sample(frac=1, random_state=seed).reset_index(drop=True)
    text = rng.normal(size=(len(table), 8))
    text[:, :3] += 2 * np.eye(4)[[CLASSES.index(y) if y else 3 for y in table["label"]], :3]
    return table, {"t": text.astype(np.float32), "a": rng.normal(size=(len(table), 4)).astype(np.float32)}


def every_dialogue(feature_set):
    return [d for split in feature_set.splits.values() for d in split]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A feature file built from a table, and the checkpoint of a 3-epoch run on it."""
    directory = tmp_path_factory.mktemp("custom")
    table, arrays = utterances()
    build_features(table, arrays, directory / "mine.pkl")
    config = train_MALN.parse_overrides([f"--out_dir={directory}", "--run_name=run", f"--features={directory / 'mine.pkl'}",
                                         "--epochs=3", *TINY])
    metrics = train_MALN.run(config)
    return {"directory": directory, "features": str(directory / "mine.pkl"), "checkpoint": str(directory / "run" / "best.pt"),
            "table": table, "arrays": arrays, "metrics": metrics}


def test_built_file_reads_back_in_position_order(tmp_path):
    table, arrays = utterances()
    build_features(table, arrays, tmp_path / "mine.pkl")
    feature_set = load_features(str(tmp_path / "mine.pkl"))  # through the restricted unpickler
    assert feature_set.layout == "maln" and feature_set.class_names == CLASSES
    assert feature_set.feature_sizes == {"t": 8, "a": 4}
    for split in SPLITS:
        assert [d.dialogue_id for d in feature_set.splits[split]] == list(dict.fromkeys(table[table["split"] == split]["dialogue_id"]))
    for d in every_dialogue(feature_set):
        rows = table[table["dialogue_id"] == d.dialogue_id].sort_values("position")
        assert np.array_equal(d.features["a"].numpy(), arrays["a"][rows.index])
        assert d.speaker_names == rows["speaker"].tolist()
        assert d.labels.tolist() == [CLASSES.index(y) if y else -1 for y in rows["label"]]


def test_explicit_class_order_sets_the_label_ids(tmp_path):
    table, arrays = utterances()
    data = build_features(table, arrays, tmp_path / "mine.pkl", class_names=["happy", "sad", "angry", "calm"])
    first = table[table["dialogue_id"] == "call0"].sort_values("position")
    assert data["class_names"] == ["happy", "sad", "angry", "calm"]
    assert data["labels"]["call0"] == [["happy", "sad", "angry", "calm"].index(y) if y else None for y in first["label"]]


def corrupt(table, arrays, change):
    table, arrays = table.copy(), {m: x.copy() for m, x in arrays.items()}
    if change == "duplicate":
        table.loc[5, ["dialogue_id", "position"]] = table.loc[3, ["dialogue_id", "position"]].values
    elif change == "duplicate at the last position":  # a row more, no gap: without the check a row would be lost
        last = table.loc[table["dialogue_id"].eq("call0"), "position"].idxmax()
        table = pd.concat([table, table.loc[[last]]], ignore_index=True)
        arrays = {m: np.concatenate([x, x[[last]]]) for m, x in arrays.items()}
    elif change == "gap":
        table.loc[table["dialogue_id"].eq("call1") & table["position"].eq(1), "position"] = 7
    elif change == "split":
        table.loc[4, "split"] = "dev"
    elif change == "two splits":
        table.loc[table["dialogue_id"].eq("call0") & table["position"].eq(2), "split"] = "test"
    elif change == "position":
        table["position"] = table["position"].astype(object)
        table.loc[2, "position"] = "first"
    elif change == "label":
        table.loc[table["label"] == "calm", "label"] = "bored"
    elif change == "nan":
        arrays["t"][6, 1] = np.nan
    elif change == "rows":
        arrays["a"] = arrays["a"][:-1]
    return table, arrays


@pytest.mark.parametrize("change, message", [
    ("duplicate", r"table row 5: dialogue '\w+' position \d is already at table row 3"),
    ("duplicate at the last position", r"table row \d+: dialogue 'call0' position \d is already at table row \d+"),
    ("gap", r"dialogue 'call1' has no position 1 \(its next is 2, at table row \d+\)"),
    ("split", r"table row 4: split 'dev' is none of train, valid, test"),
    ("two splits", r"table row \d+: dialogue 'call0' is in split '\w+' here but '\w+' at table row \d+"),
    ("position", r"table row 2: position 'first' is not a whole number"),
    ("label", r"table row \d+: label 'bored' is none of the classes \['angry', 'calm', 'happy'\]"),
    ("nan", r"modality 't': row 6 \(the table's row 6\) has NaN"),
    ("rows", r"modality 'a': shape \(\d+, 4\), expected \(\d+, D\)"),
])
def test_builder_names_what_is_wrong(tmp_path, change, message):
    table, arrays = corrupt(*utterances(), change)
    with pytest.raises(DataError, match=message):
        build_features(table, arrays, tmp_path / "mine.pkl", class_names=CLASSES)
    assert not (tmp_path / "mine.pkl").exists()


@pytest.mark.slow
def test_python_m_extraction_table_features_runs_the_table_builder_as_documented(tmp_path):
    write_inputs(tmp_path)
    result = subprocess.run([sys.executable, "-m", "extraction.table_features", f"--table={tmp_path / 'utterances.csv'}",
                             f"--t={tmp_path / 'text.npy'}", f"--out={tmp_path / 'mine.pkl'}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert f"wrote {tmp_path / 'mine.pkl'}: dialogues train/valid/test 8/2/3" in result.stdout, result.stderr
    assert load_features(str(tmp_path / "mine.pkl")).layout == "maln"


def test_command_line_builds_from_csv_and_names_its_lines(tmp_path, capsys):
    table, arrays = utterances()
    table.to_csv(tmp_path / "utterances.csv", index=False)
    np.save(tmp_path / "text.npy", arrays["t"])
    np.save(tmp_path / "audio.npy", arrays["a"])
    table_features.main([f"--table={tmp_path / 'utterances.csv'}", f"--t={tmp_path / 'text.npy'}", f"--a={tmp_path / 'audio.npy'}",
                     f"--out={tmp_path / 'cli.pkl'}"])
    assert "dialogues train/valid/test 8/2/3" in capsys.readouterr().out
    from_csv, from_frame = load_features(str(tmp_path / "cli.pkl")), build_features(table, arrays, tmp_path / "frame.pkl")
    for d in every_dialogue(from_csv):
        assert np.array_equal(d.features["t"].numpy(), from_frame["features"]["t"][d.dialogue_id])
        assert d.speaker_names == from_frame["speakers"][d.dialogue_id]
    table.loc[3, "split"] = "dev"
    table.to_csv(tmp_path / "utterances.csv", index=False)
    with pytest.raises(SystemExit, match=r"utterances.csv row 3 \(line 5\): split 'dev'"):
        table_features.main([f"--table={tmp_path / 'utterances.csv'}", f"--t={tmp_path / 'text.npy'}", f"--out={tmp_path / 'x.pkl'}"])


def test_empty_valid_list_holds_out_a_seeded_share_of_train(tmp_path):
    table, arrays = utterances(n_dialogues=(12, 0, 3))
    data = build_features(table, arrays, tmp_path / "mine.pkl")
    assert data["splits"]["valid"] == []
    splits = load_features(str(tmp_path / "mine.pkl"), valid_fraction=0.25, split_seed=7).splits
    expected_train, expected_valid = split_validation(data["splits"]["train"], 0.25, 7)
    assert [d.dialogue_id for d in splits["valid"]] == expected_valid and len(expected_valid) == 3
    assert [d.dialogue_id for d in splits["train"]] == expected_train


def test_a_known_layout_without_dataset_gets_its_own_class_names(tmp_path):
    path = str(tmp_path / "raw.pkl")
    layouts.dialoguernn_iemocap(path)
    assert load_dataset("demo", features=path).class_names == CLASS_NAMES["IEMOCAP"]  # what --features= alone does


def test_training_refuses_a_file_without_labels(tmp_path):
    table, arrays = utterances()
    build_features(table.assign(label=""), arrays, tmp_path / "unlabelled.pkl")
    with pytest.raises(SystemExit, match="no labelled training utterance"):
        train_MALN.main([f"--features={tmp_path / 'unlabelled.pkl'}", f"--out_dir={tmp_path}"])


def test_built_file_trains(trained):
    metrics = trained["metrics"]
    assert metrics["class_names"] == CLASSES and metrics["layout"] == "maln"
    history = pd.read_csv(trained["directory"] / "run" / "history.csv")
    assert len(history) == 3 and np.isfinite(history["train_loss"]).all()
    assert MALN.from_checkpoint(trained["checkpoint"]).checkpoint["class_names"] == CLASSES


def test_predictions_csv_agrees_with_evaluate(trained, tmp_path, device):
    train_MALN.main([f"--predict={trained['checkpoint']}", f"--features={trained['features']}",
                     f"--predictions={tmp_path / 'predictions.csv'}", f"--device={device}"])
    csv = pd.read_csv(tmp_path / "predictions.csv", keep_default_na=False)
    feature_set = load_features(trained["features"])
    assert len(csv) == len(trained["table"]) and set(csv["split"]) == set(SPLITS)
    model = MALN.from_checkpoint(trained["checkpoint"], device)
    batches = make_batches(feature_set.splits["test"], 4)
    evaluated = train_MALN.evaluate(model, batches, torch.device(device), False, None, keep_vectors=True)
    expected = pd.DataFrame({"dialogue_id": evaluated["vectors"]["dialogue_id"], "position": evaluated["vectors"]["position"],
                             "expected": [CLASSES[k] for k in evaluated["vectors"]["prediction"]]})
    test = csv[csv["split"] == "test"].merge(expected, on=["dialogue_id", "position"], validate="one_to_one")
    assert len(test) == len(expected) and (test["prediction"] == test["expected"]).all()
    labelled = test[test["label"] != ""]
    assert 100 * (labelled["prediction"] == labelled["label"]).mean() == pytest.approx(evaluated["accuracy"])
    gold = trained["table"].assign(gold=trained["table"]["label"])[["dialogue_id", "position", "speaker", "gold"]]
    joined = csv.merge(gold, on=["dialogue_id", "position"], validate="one_to_one")
    assert (joined["label"] == joined["gold"]).all() and (joined["speaker_x"] == joined["speaker_y"]).all()
    assert ((csv["probability"] > 1 / 3) & (csv["probability"] <= 1)).all()



def test_unlabelled_file_gets_the_same_predictions(trained, tmp_path):
    table, arrays = trained["table"], trained["arrays"]
    build_features(table.assign(label="", split="test"), arrays, tmp_path / "new.pkl")
    model = MALN.from_checkpoint(trained["checkpoint"])
    new = predict.predict(model, load_features(str(tmp_path / "new.pkl")))
    known = predict.predict(model, load_features(trained["features"]))
    assert (new["label"] == "").all() and len(new) == len(table)
    joined = new.merge(known, on=["dialogue_id", "position"], validate="one_to_one")
    assert (joined["prediction_x"] == joined["prediction_y"]).all()
    assert np.allclose(joined["probability_x"], joined["probability_y"], atol=1e-5)


def test_other_feature_sizes_or_modalities_are_refused_by_name(trained, tmp_path):
    table, arrays = trained["table"], trained["arrays"]
    build_features(table, {"t": arrays["t"][:, :6], "a": arrays["a"]}, tmp_path / "other.pkl")
    with pytest.raises(SystemExit, match=r"other.pkl: its feature sizes \{'t': 6, 'a': 4\} do not fit the checkpoint's"):
        train_MALN.main([f"--predict={trained['checkpoint']}", f"--features={tmp_path / 'other.pkl'}"])
    build_features(table, {"t": arrays["t"]}, tmp_path / "text.pkl")
    with pytest.raises(SystemExit, match=r"text.pkl: has no modality 'a'"):
        train_MALN.main([f"--predict={trained['checkpoint']}", f"--features={tmp_path / 'text.pkl'}"])


def test_predict_split_writes_only_that_split_beside_the_checkpoint(trained):
    train_MALN.main([f"--predict={trained['checkpoint']}", f"--features={trained['features']}", "--predict_split=valid"])
    csv = pd.read_csv(trained["directory"] / "run" / "predictions.csv", keep_default_na=False)
    valid = trained["table"][trained["table"]["split"] == "valid"]
    assert set(csv["split"]) == {"valid"} and len(csv) == len(valid)
    assert set(csv["dialogue_id"]) == set(valid["dialogue_id"])


# ----------------------------------------------------------------------------- splits

def without_labels(split):
    return lambda table: table.assign(label=table["label"].where(table["split"] != split, ""))


def without_dialogues(split):
    return lambda table: table[table["split"] != split]


def one_training_dialogue(table):
    kept = table[(table["split"] != "train") | (table["dialogue_id"] == "call0")]
    return kept[kept["split"] != "valid"]


@pytest.mark.parametrize("change, message", [
    (without_labels("valid"), r"the valid split \(2 dialogues\) has no labelled utterance, so no epoch could be selected"),
    (without_dialogues("test"), r"the test split has no dialogue; training needs train, valid and test dialogues"),
    (without_dialogues("train"), r"the train split has no dialogue"),
    (one_training_dialogue, r"the valid split has no dialogue \(a file without validation dialogues has a share of its "
                            r"training dialogues held out, which needs at least 2 of them\)"),
])
def test_a_split_training_cannot_use_is_refused_before_training(tmp_path, monkeypatch, change, message):
    table, arrays = utterances()
    changed = change(table)
    build_features(changed, {m: x[changed.index] for m, x in arrays.items()}, tmp_path / "mine.pkl")
    monkeypatch.setattr(train_MALN, "train_epoch", lambda *args: pytest.fail("trained"))
    with pytest.raises(SystemExit, match=r"^error: .*mine.pkl: " + message):
        train_MALN.main([f"--features={tmp_path / 'mine.pkl'}", f"--out_dir={tmp_path / 'runs'}", *TINY])
    assert not (tmp_path / "runs").exists()


def test_a_test_split_without_labels_trains_and_writes_null_test_scores(tmp_path, capsys):
    table, arrays = utterances()
    build_features(without_labels("test")(table), arrays, tmp_path / "mine.pkl")
    train_MALN.main([f"--features={tmp_path / 'mine.pkl'}", f"--out_dir={tmp_path}", "--run_name=run", "--epochs=2", *TINY])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_weighted_f1"] is None and metrics["optimistic_best_test_epoch"] is None
    assert 0 <= metrics["valid_weighted_f1"] <= 100
    assert "the test split has no labelled utterance, so there are no test scores" in capsys.readouterr().out


# ----------------------------------------------------------------------------- builder inputs and outputs

def write_inputs(directory):
    table, arrays = utterances()
    table.to_csv(directory / "utterances.csv", index=False)
    np.save(directory / "text.npy", arrays["t"])
    return table, arrays


def build_from(directory, table="utterances.csv", text="text.npy", out="mine.pkl"):
    table_features.main([f"--table={directory / table}", f"--t={directory / text}", f"--out={directory / out}"])


@pytest.mark.parametrize("table, text, message", [
    ("empty.csv", "text.npy", r"empty.csv: is empty; a table starts with the header line"),
    ("latin1.csv", "text.npy", r"latin1.csv: cannot be read as a UTF-8 CSV table \(UnicodeDecodeError"),
    ("ragged.csv", "text.npy", r"ragged.csv line 3: 6 fields, the header has 5"),
    ("utterances.csv", "text.npz", r"text.npz\): an .npz archive; give one .npy array per modality"),
    ("utterances.csv", "objects.npy", r"objects.npy\): an array of Python objects"),
    ("utterances.csv", "missing.npy", r"missing.npy\): file not found"),
    ("utterances.csv", "claims.npy", r"claims.npy\): its header claims shape \(1000000000, 8\) of float32 \(29.8 GiB\), "
                                     r"the file holds 128 bytes"),
    ("utterances.csv", "empty.npy", r"empty.npy\): shape \(\d+, 0\): no feature columns"),
])
def test_builder_input_that_cannot_be_read_is_one_line(tmp_path, table, text, message):
    rows, arrays = write_inputs(tmp_path)
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "latin1.csv").write_bytes("dialogue_id,position,speaker,label,split\ncafé,0,Ann,,train\n".encode("latin1"))
    (tmp_path / "ragged.csv").write_text("dialogue_id,position,speaker,label,split\nd,0,Ann,,train\nd,1,Bob,,train,x\n")
    np.savez(tmp_path / "text.npz", t=arrays["t"])
    np.save(tmp_path / "objects.npy", np.array([["x"]] * len(rows), dtype=object))
    np.save(tmp_path / "empty.npy", np.zeros((len(rows), 0), np.float32))
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 8), np.float32))
    with open(tmp_path / "claims.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {**header, "shape": (10 ** 9, 8)})
        f.write(b"\0" * 128)
    with pytest.raises(SystemExit, match=r"^error: .*" + message) as stop:
        build_from(tmp_path, table, text)
    assert "\n" not in str(stop.value) and not (tmp_path / "mine.pkl").exists()


@pytest.mark.parametrize("out, message", [
    ("text.npy", r"--out=.*text.npy is also an input of this command \(.*text.npy\)"),
    ("utterances.csv", r"--out=.*utterances.csv is also an input of this command"),
    ("done.pkl", r"--out=.*done.pkl exists; it is not overwritten"),
    (".", r"--out=.* is a directory"),
    ("done.pkl/mine.pkl", r"--out: .*done.pkl is a file, not a directory"),
])
def test_builder_output_is_never_an_input_or_an_existing_file(tmp_path, out, message):
    write_inputs(tmp_path)
    (tmp_path / "done.pkl").write_bytes(b"written before")
    before = {name: (tmp_path / name).read_bytes() for name in ("text.npy", "utterances.csv", "done.pkl")}
    with pytest.raises(SystemExit, match=r"^error: " + message):
        build_from(tmp_path, out=out)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_class_names_must_be_a_list_of_strings(tmp_path):
    table, arrays = utterances()
    with pytest.raises(DataError, match=r"class_names must be a list of non-empty class-name strings, got 'abc'"):
        build_features(table, arrays, tmp_path / "mine.pkl", class_names="abc")
    data = build_features(table, arrays, tmp_path / "mine.pkl")
    data["class_names"] = "abc"
    (tmp_path / "string.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=r"string.pkl: field 'class_names' must be a list of class-name strings"):
        load_features(str(tmp_path / "string.pkl"))


@pytest.mark.parametrize("change, message", [
    (lambda data: data.update(splits=[["call0"], [], ["call9"]]), r"field 'splits' must be a dict .* got list"),
    (lambda data: data["splits"].pop("valid"), r"field 'splits' has no 'valid' list; give \[\] to hold out a share of training"),
    (lambda data: data["splits"].update(test="call9"), r"field 'splits': 'test' must be a list of dialogue ids, got str"),
    (lambda data: data.update(features={"x": data["features"]["t"]}),
     r"has no modality 't', 'a', 'v' \(its features are \['x'\]; a new modality is a line of dataloader.MODALITIES\)"),
    (lambda data: data["splits"]["test"].append({"call1": 1}), r"the test split lists \"\{'call1': 1\}\", a dict"),
    (lambda data: data.update(features={"t": []}), r"field 'features' must be a dict of modality -> dict"),
])
def test_a_malformed_maln_file_is_one_line_naming_the_field(tmp_path, change, message):
    data = build_features(*utterances(), tmp_path / "mine.pkl")
    change(data)
    (tmp_path / "broken.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=r"broken.pkl: " + message):
        load_features(str(tmp_path / "broken.pkl"))


# ----------------------------------------------------------------------------- predictions

@pytest.mark.parametrize("output", ["checkpoint", "features"])
def test_predictions_never_replace_an_input_or_an_existing_file(trained, output):
    path = trained[output]
    before = open(path, "rb").read()
    with pytest.raises(SystemExit, match=f"^error: --predictions={path} is also an input of this command"):
        train_MALN.main([f"--predict={trained['checkpoint']}", f"--features={trained['features']}", f"--predictions={path}"])
    assert open(path, "rb").read() == before
    existing = trained["directory"] / "existing.csv"
    existing.write_text("another command's output")
    with pytest.raises(SystemExit, match=f"^error: --predictions={existing} exists; it is not overwritten"):
        train_MALN.main([f"--predict={trained['checkpoint']}", f"--features={trained['features']}", f"--predictions={existing}"])


def test_a_dialogue_longer_than_the_checkpoint_reads_is_refused_by_name(trained, tmp_path):
    arrays = trained["arrays"]
    long = pd.DataFrame({"dialogue_id": "long", "position": range(200), "speaker": "Ann", "label": "", "split": "test"})
    build_features(long, {m: np.repeat(x[:1], 200, 0) for m, x in arrays.items()}, tmp_path / "long.pkl")
    with pytest.raises(SystemExit, match=r"long.pkl: test dialogue 'long' has 200 utterances; the checkpoint's model reads "
                                         r"at most 127 \(its max_positions=128"):
        train_MALN.main([f"--predict={trained['checkpoint']}", f"--features={tmp_path / 'long.pkl'}",
                         f"--predictions={tmp_path / 'p.csv'}"])
