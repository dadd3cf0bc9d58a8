import os
import pickle

import numpy as np
import pytest
import torch

import layouts
from conftest import MINILM
from dataloader import DataError, collate, load_features, make_demo


@pytest.mark.parametrize("writer, layout, sizes, n_classes, max_party, test_ids_at", [
    (layouts.dialoguernn_iemocap, "dialoguernn-iemocap", {"t": 100, "a": 100, "v": 512}, 6, 1, 8),
    (layouts.dialoguernn_meld, "dialoguernn-meld", {"t": 600, "a": 300}, 7, 8, 7),
    (layouts.mmgcn_meld, "mmgcn-meld", {"t": 600, "a": 300, "v": 342}, 7, 8, 8),
    (layouts.cosmic_iemocap, "cosmic-iemocap", {"t": 1024}, 6, 1, 8),
    (layouts.cosmic_meld, "cosmic-meld", {"t": 1024}, 7, 8, 9),
])
def test_each_reader_reads_its_layout(tmp_path, writer, layout, sizes, n_classes, max_party, test_ids_at):
    path = str(tmp_path / "features.pkl")
    data = writer(path)
    feature_set = load_features(path)
    assert feature_set.layout == layout
    assert feature_set.feature_sizes == sizes
    assert len(feature_set.class_names) == n_classes
    ids = {d.dialogue_id for split in feature_set.splits.values() for d in split}
    assert len(ids) == 12
    assert [d.dialogue_id for d in feature_set.splits["test"]] == [str(i) for i in data[test_ids_at]]
    every = [d for split in feature_set.splits.values() for d in split]
    assert max(int(d.speakers.max()) for d in every) <= max_party
    assert all(d.labels.max() < n_classes and d.labels.min() >= 0 for d in every)


@pytest.mark.parametrize("writer, first_vector", [(layouts.cosmic_iemocap, 2), (layouts.cosmic_meld, 3)])
def test_cosmic_text_is_the_mean_of_the_four_vectors(tmp_path, writer, first_vector):
    path = str(tmp_path / "cosmic.pkl")
    data = writer(path)
    for dialogue in load_features(path).splits["test"]:
        key = dialogue.dialogue_id if dialogue.dialogue_id in data[0] else int(dialogue.dialogue_id)
        expected = np.mean([np.asarray(data[k][key]) for k in range(first_vector, first_vector + 4)], axis=0)
        assert np.allclose(dialogue.features["t"].numpy(), expected, atol=1e-6)


def test_speakers_map_m_f_to_parties_and_one_hot_to_its_index(tmp_path):
    path = str(tmp_path / "iemocap.pkl")
    data = layouts.dialoguernn_iemocap(path)
    for d in load_features(path).splits["train"]:
        assert d.speakers.tolist() == [0 if s == "M" else 1 for s in data[1][d.dialogue_id]]
    path = str(tmp_path / "meld.pkl")
    data = layouts.mmgcn_meld(path)
    for d in load_features(path).splits["train"]:
        assert d.speakers.tolist() == [int(np.argmax(s)) for s in data[1][int(d.dialogue_id)]]


def test_cosmic_text_joins_dialoguernn_audio_and_visual(tmp_path):
    av_path, text_path = str(tmp_path / "raw.pkl"), str(tmp_path / "cosmic.pkl")
    raw = layouts.dialoguernn_iemocap(av_path)
    layouts.cosmic_iemocap(text_path, ids_from=raw)
    feature_set = load_features(text_path, "IEMOCAP", av_path)
    assert feature_set.feature_sizes == {"t": 1024, "a": 100, "v": 512}
    d = feature_set.splits["test"][0]
    assert np.allclose(d.features["a"].numpy(), np.stack(raw[4][d.dialogue_id]))
    assert feature_set.layout == "cosmic-iemocap+dialoguernn-iemocap"


def test_validation_comes_from_the_file_or_a_seeded_tenth_of_train(tmp_path):
    path = str(tmp_path / "cosmic.pkl")
    data = layouts.cosmic_iemocap(path)
    assert [d.dialogue_id for d in load_features(path).splits["valid"]] == list(data[9])
    path = str(tmp_path / "raw.pkl")
    data = layouts.dialoguernn_iemocap(path, n_dialogues=40)
    first, again, other = (load_features(path, split_seed=s).splits for s in (1, 1, 2))
    n_train = len(data[7])
    assert len(first["valid"]) == round(0.1 * n_train) and len(first["train"]) == n_train - len(first["valid"])
    assert [d.dialogue_id for d in first["valid"]] == [d.dialogue_id for d in again["valid"]]
    assert [d.dialogue_id for d in first["valid"]] != [d.dialogue_id for d in other["valid"]]
    assert not {d.dialogue_id for d in first["valid"]} & {d.dialogue_id for d in first["train"]}


def test_missing_modality_and_missing_file_name_the_file(tmp_path):
    path = str(tmp_path / "cosmic.pkl")
    layouts.cosmic_iemocap(path)
    with pytest.raises(DataError, match="cosmic.pkl.*no modality 'av'"):
        load_features(path, modalities="tav")
    with pytest.raises(DataError, match="(?s)nowhere.pkl.*--dataset=demo"):
        load_features(str(tmp_path / "nowhere.pkl"))


def test_restricted_unpickler_refuses_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps((Payload(),) * 9))
    with pytest.raises(DataError, match="evil.pkl.*refused.*system"):
        load_features(str(path))
    assert not (tmp_path / "pwned").exists()


def test_collate_pads_with_masks():
    demo = make_demo(0, n_dialogues=(4, 1, 1))
    dialogues = demo.splits["train"][:3]
    batch = collate(dialogues)
    n = max(len(d) for d in dialogues)
    assert batch["features"]["t"].shape == (3, n, 24)
    assert batch["utterance_mask"].sum() == sum(len(d) for d in dialogues)
    assert (batch["labels"][~batch["utterance_mask"]] == -1).all()
    assert torch.equal(batch["lengths"], torch.tensor([len(d) for d in dialogues]))


def test_demo_is_deterministic_and_multiparty():
    first, second = make_demo(3), make_demo(3)
    assert torch.equal(first.splits["test"][5].features["v"], second.splits["test"][5].features["v"])
    parties = [int(d.speakers.max()) + 1 for d in first.splits["train"]]
    lengths = [len(d) for d in first.splits["train"]]
    assert min(parties) == 2 and max(parties) == 9 and min(lengths) >= 5 and max(lengths) <= 40
    assert 0.8 < first.info["oracle_accuracy"] <= 1.0


@pytest.mark.skipif(not os.path.exists(MINILM), reason="../shared/data is absent")
def test_reads_the_real_iemocap_text_file():
    feature_set = load_features(MINILM, "IEMOCAP")
    assert feature_set.layout == "cosmic-iemocap"
    assert feature_set.feature_sizes == {"t": 384}
    assert [len(feature_set.splits[s]) for s in ("train", "valid", "test")] == [108, 12, 31]
    assert sum(len(d) for split in feature_set.splits.values() for d in split) == 7433
