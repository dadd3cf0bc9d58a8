"""benchmarks/context.py: where the context is lost. The breakdown groups each utterance by how far back
its speaker last spoke; the probes read the context encoder's and SCLM's vectors of the right utterances."""

import os

import numpy as np
import torch

import train_MALN
from benchmarks import context
from conftest import DEMO_SETTINGS
from dataloader import Dialogue, make_batches, make_demo
from MALN_model_fix import MALN, MALNConfig


def test_the_breakdown_counts_how_far_back_each_speaker_last_spoke():
    speakers = torch.tensor([0, 1, 0, 0, 2, 1])
    dialogue = Dialogue("d", {"t": torch.zeros(6, 3)}, speakers, torch.zeros(6, dtype=torch.long))
    facts = context.utterance_facts([dialogue])
    assert facts["same speaker last spoke"].tolist() == [0, 0, 2, 1, 0, 4]
    assert facts["parties"].tolist() == [3] * 6 and facts["dialogue length"].tolist() == [6] * 6


def test_a_speakers_mean_covers_that_speakers_turns_only():
    dialogue = make_demo(seed=0, n_dialogues=(1, 1, 1)).splits["train"][0]
    means = context.party_means(dialogue, "t")
    x, speakers = dialogue.features["t"].numpy(), dialogue.speakers.numpy()
    for i, s in enumerate(speakers):
        assert np.allclose(means[i], x[speakers == s].mean(0), atol=1e-5)


def test_the_probes_read_each_utterances_own_context_and_sclm_vectors():
    torch.manual_seed(0)
    demo = make_demo(seed=1, n_dialogues=(6, 1, 1))
    sizes = {m: x.shape[1] for m, x in demo.splits["train"][0].features.items()}
    model = MALN(MALNConfig(feature_sizes=sizes, n_classes=4, hidden_size=8, speaker_size=4, cross_heads=2,
                            sclm_mode="utterance", context_encoder="party_gru")).eval()
    dialogues = demo.splits["train"]
    vectors = context.inner_vectors(model, dialogues)
    ordered = [d for batch, _ in make_batches(dialogues, 16) for d in batch]
    assert np.array_equal(vectors["label"], np.concatenate([d.labels.numpy() for d in ordered]))
    first, alone = ordered[0], make_batches([ordered[0]], 1)[0][1]
    with torch.no_grad():
        own = model.context["a"](alone["features"]["a"], alone["lengths"], alone["speakers"],
                                 alone["utterance_mask"])[0]       # standardize is off: the inputs as they are
    assert np.allclose(vectors["context_a"][: len(first)], own.numpy(), atol=1e-5)
    assert vectors["sclm_t"].shape == (len(vectors["label"]), 4)
    assert np.array_equal(vectors["offset_v"][: len(first)], first.offsets["v"].numpy())


def test_a_run_that_did_not_export_is_broken_down_from_its_best_checkpoint(tmp_path, monkeypatch):
    feature_set = make_demo(0, n_dialogues=(12, 3, 4))
    config = train_MALN.parse_overrides([*DEMO_SETTINGS, f"--out_dir={tmp_path}", "--run_name=run", "--epochs=2",
                                         "--batch_size=4", "--export_features=True"])
    train_MALN.run(config, feature_set)
    monkeypatch.setattr(context, "run_data", lambda run_dir: feature_set)
    from_export = context.breakdown(tmp_path / "run")
    os.remove(tmp_path / "run" / "features_test.npz")
    np.testing.assert_equal(context.breakdown(tmp_path / "run"), from_export)   # an empty bin's NaN equals NaN


def test_every_utterance_falls_in_one_bin_of_each_group_short_dialogues_and_lone_speakers_included():
    for group, (_, bins) in context.GROUPS.items():
        smallest = 0 if group == "same speaker last spoke" else 1
        for value in range(smallest, 300):
            assert sum(low <= value <= high for _, low, high in bins) == 1, (group, value)


def test_the_encoder_alone_is_matched_to_each_utterance_by_dialogue_and_position_in_the_runs_class_order(monkeypatch):
    from benchmarks import encoder_scores
    from extraction import extract_features
    feature_set = make_demo(0, n_dialogues=(1, 1, 1))                  # class names: the demo's four
    names = list(reversed(feature_set.class_names))                    # the encoder's own class order
    rows = {"dialogue_id": ["b", "a", "a", "b"], "position": ["0", "1", "0", "1"]}
    predicted = {"test": ([0, 1, 2, 3], None, np.array([0, 1, 2, 3]))}  # row i: the encoder's class i
    monkeypatch.setattr(extract_features, "read_transcripts", lambda path, dataset: (None, None))
    monkeypatch.setattr(encoder_scores, "encoder_predictions", lambda table, directory, splits: (predicted, rows, names))
    exported = {"dialogue_id": np.array(["a", "a", "b", "b"]), "position": np.array([0, 1, 0, 1])}
    alone = context.encoder_alone("transcripts.pkl", "encoder", "demo", feature_set, exported)
    assert [feature_set.class_names[c] for c in alone] == [names[2], names[1], names[0], names[3]]
