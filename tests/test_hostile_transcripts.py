"""COSMIC transcript files (extract_features.py --transcripts) made by a hostile or careless hand: what cannot
be right is refused in one line naming the file, the dialogue and the field, before anything is encoded; sizes
the file claims (classes, utterances after shared references are expanded) are bounded by what it holds."""

import os
import pickle
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

from extraction import extract_features
from extraction import table_features


def iemocap_like():
    return [{"s1": ["M", "F"], "s2": ["F", "F", "M"], "s3": ["M"]}, {"s1": [0, 5], "s2": [1, 2, 3], "s3": [4]},
            {"s1": ["Hi.", "Go away!"], "s2": ["Sad news.", "Fine.", "No way!"], "s3": ["Great!"]},
            ["s1"], ["s3"], ["s2"]]


@pytest.fixture
def never_encodes(monkeypatch):
    for name in ("encode_text", "finetuned_text", "saved_encoder_text"):
        monkeypatch.setattr(extract_features, name, lambda *args, **kwargs: pytest.fail("encoding started"))


def run(tmp_path, data, *options):
    path = tmp_path / "t.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    extract_features.main([f"--transcripts={path}", f"--out={tmp_path / 'x.pkl'}", *options])


def spoiled(change):
    data = iemocap_like()
    change(data)
    return data


@pytest.mark.parametrize("sentence, kind", [(None, "NoneType"), (123, "int"), (["Hi."], "list"), (b"Hi.", "bytes"),
                                            (float("nan"), "float")])
def test_a_sentence_that_is_not_text_is_refused_naming_its_dialogue_and_utterance(tmp_path, never_encodes, sentence, kind):
    data = spoiled(lambda d: d[2]["s2"].__setitem__(1, sentence))
    with pytest.raises(SystemExit, match=rf"^error: .*t.pkl: dialogue 's2' utterance 1: sentence .* is a {kind}, not text$"):
        run(tmp_path, data, "--dataset=IEMOCAP")


def test_a_sentences_field_that_is_one_string_is_not_read_letter_by_letter(tmp_path, never_encodes):
    data = spoiled(lambda d: (d[2].__setitem__("s3", "Hello!"), d[0].__setitem__("s3", list("MFMFMF")),
                              d[1].__setitem__("s3", [0] * 6)))
    with pytest.raises(SystemExit, match=r"^error: .*t.pkl: dialogue 's3': sentences is a str \('Hello!'\), not a list"):
        run(tmp_path, data, "--dataset=IEMOCAP")


@pytest.mark.parametrize("field, value, message", [
    (0, 7, r"dialogue 's1': speakers is a int \(7\), not a list"),
    (2, ["Hi.", "\ud800 broken"], r"dialogue 's1' utterance 1: the sentence holds a lone surrogate"),
    (2, ["Hi.", "   "], r"dialogue 's1' utterance 1: the sentence is empty"),
    (0, ["M", ["x", None]], r"dialogue 's1': speaker \['x', None\] is neither a name nor a one-hot list"),
])
def test_a_dialogue_field_of_the_wrong_kind_is_one_line(tmp_path, never_encodes, field, value, message):
    data = spoiled(lambda d: d[field].__setitem__("s1", value))
    with pytest.raises(SystemExit, match=rf"^error: .*t.pkl: {message}"):
        run(tmp_path, data, "--dataset=IEMOCAP")


def test_an_empty_dialogue_listed_in_a_split_is_refused_not_dropped(tmp_path, never_encodes):
    data = spoiled(lambda d: [d[k].__setitem__("s4", []) for k in range(3)] + [d[3].append("s4")])
    with pytest.raises(SystemExit, match=r"^error: .*t.pkl: train dialogue 's4' has no utterances"):
        run(tmp_path, data, "--dataset=IEMOCAP")


@pytest.mark.parametrize("dialogue_id", [["s1"], 1.5, True])
def test_a_dialogue_id_that_is_no_text_or_number_is_one_line(tmp_path, never_encodes, dialogue_id):
    data = spoiled(lambda d: d[3].append(dialogue_id))
    with pytest.raises(SystemExit, match=r"^error: .*t.pkl: train ids: dialogue id .* is a (list|float|bool); dialogue ids"):
        run(tmp_path, data, "--dataset=IEMOCAP")


def test_a_huge_label_does_not_number_millions_of_classes(tmp_path, never_encodes):
    data = spoiled(lambda d: d[1]["s2"].__setitem__(0, 10 ** 8))
    start = time.perf_counter()
    with pytest.raises(SystemExit, match=r"^error: .*t.pkl: labels: the largest label is 100000000, which would number "
                                         r"100,000,001 classes, but only 6 distinct labels occur; give --dataset"):
        run(tmp_path, data)
    assert time.perf_counter() - start < 10
    with pytest.raises(SystemExit, match=r"dialogue 's2' utterance 0: label 100000000 is not a class number 0-5"):
        run(tmp_path, data, "--dataset=IEMOCAP")


def test_numpy_integer_labels_are_class_numbers(tmp_path):
    data = spoiled(lambda d: d[1].__setitem__("s1", [np.int64(0), np.int64(5)]))
    (tmp_path / "t.pkl").write_bytes(pickle.dumps(data, protocol=4))
    table, names = extract_features.read_transcripts(str(tmp_path / "t.pkl"), "IEMOCAP")
    assert table["label"].tolist()[:2] == ["hap", "fru"]


def test_dialogues_sharing_one_list_are_counted_as_the_utterances_they_become(tmp_path, never_encodes):
    sentences, speakers, labels = ["Just one sentence."] * 1000, ["M"] * 1000, [0] * 1000
    ids = [f"d{k}" for k in range(300)]
    data = [{d: speakers for d in ids}, {d: labels for d in ids}, {d: sentences for d in ids}, ids, [], []]
    start = time.perf_counter()
    with pytest.raises(SystemExit, match=r"^error: .*t.pkl: holds more than [\d,]+ utterances .* its dialogues share their "
                                         r"lists; refused before tabling them$"):
        run(tmp_path, data, "--dataset=IEMOCAP")
    assert os.path.getsize(tmp_path / "t.pkl") < 50_000 and time.perf_counter() - start < 10


def test_rows_of_a_transcript_table_are_named_by_dialogue_and_utterance_not_table_row(tmp_path):
    (tmp_path / "t.pkl").write_bytes(pickle.dumps(iemocap_like(), protocol=4))
    table, names = extract_features.read_transcripts(str(tmp_path / "t.pkl"), "IEMOCAP")
    table.loc[1, "split"] = "later"
    with pytest.raises(extract_features.DataError, match=r"t.pkl: dialogue 's1' utterance 1: split 'later' is none of"):
        table_features.check_table(table, names, extra=("text",))
