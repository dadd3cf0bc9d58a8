import numpy as np
import pandas as pd
import pytest
import torch

import dataloader
import layouts
import train_MALN
from dataloader import CLASS_NAMES, SPLITS, DataError, build_features, load_dataset, load_features, split_validation
from MALN_model_fix import MALN

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


def test_command_line_builds_from_csv_and_names_its_lines(tmp_path, capsys):
    table, arrays = utterances()
    table.to_csv(tmp_path / "utterances.csv", index=False)
    np.save(tmp_path / "text.npy", arrays["t"])
    np.save(tmp_path / "audio.npy", arrays["a"])
    dataloader.main([f"--table={tmp_path / 'utterances.csv'}", f"--t={tmp_path / 'text.npy'}", f"--a={tmp_path / 'audio.npy'}",
                     f"--out={tmp_path / 'cli.pkl'}"])
    assert "dialogues train/valid/test 8/2/3" in capsys.readouterr().out
    from_csv, from_frame = load_features(str(tmp_path / "cli.pkl")), build_features(table, arrays, tmp_path / "frame.pkl")
    for d in every_dialogue(from_csv):
        assert np.array_equal(d.features["t"].numpy(), from_frame["features"]["t"][d.dialogue_id])
        assert d.speaker_names == from_frame["speakers"][d.dialogue_id]
    table.loc[3, "split"] = "dev"
    table.to_csv(tmp_path / "utterances.csv", index=False)
    with pytest.raises(SystemExit, match=r"utterances.csv row 3 \(line 5\): split 'dev'"):
        dataloader.main([f"--table={tmp_path / 'utterances.csv'}", f"--t={tmp_path / 'text.npy'}", f"--out={tmp_path / 'x.pkl'}"])


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
    batches = train_MALN.make_batches(feature_set.splits["test"], 4)
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
    new = train_MALN.predict(model, load_features(str(tmp_path / "new.pkl")))
    known = train_MALN.predict(model, load_features(trained["features"]))
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
