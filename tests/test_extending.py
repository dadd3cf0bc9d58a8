"""The two recipes of docs/extending.md, each trained end to end: a fourth modality (one line of
dataloader.MODALITIES and a feature file holding its stream), and another context encoder (a
module of the documented interface, registered in MALN_model_fix.CONTEXT_ENCODERS)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import dataloader
import MALN_model_fix
import train_MALN
from dataloader import DataError, load_features
from extraction.table_features import build_features
from MALN_model_fix import MALN
from conftest import DEMO_SETTINGS
from test_custom_data import TINY, utterances


def with_a_gaze_stream(tmp_path):
    """A feature file built from a table with text, audio and a fourth stream 'e' (eye gaze), which alone tells the label."""
    table, arrays = utterances()
    labels = [["angry", "calm", "happy"].index(y) if y else 3 for y in table["label"]]
    arrays["e"] = (np.eye(4)[labels] * 3 + np.random.default_rng(1).normal(size=(len(table), 4))).astype(np.float32)
    return table, arrays


def test_a_feature_file_with_a_fourth_stream_trains_once_the_stream_is_a_modality(tmp_path, monkeypatch):
    table, arrays = with_a_gaze_stream(tmp_path)
    with pytest.raises(DataError, match=r"modality 'e': the modalities are 't' \(text\), 'a' \(audio\), 'v' \(visual\)"):
        build_features(table, arrays, tmp_path / "refused.pkl")
    monkeypatch.setitem(dataloader.MODALITIES, "e", "eye gaze")                   # the recipe's one line
    build_features(table, arrays, tmp_path / "gaze.pkl")
    assert load_features(str(tmp_path / "gaze.pkl")).modalities == "tae"
    train_MALN.main([f"--features={tmp_path / 'gaze.pkl'}", "--epochs=2", f"--out_dir={tmp_path}", "--run_name=gaze",
                     "--threads=1", *TINY])
    metrics = json.loads((tmp_path / "gaze" / "metrics.json").read_text())
    assert metrics["modalities"] == "tae" and np.isfinite(metrics["test_weighted_f1"])
    model = MALN.from_checkpoint(tmp_path / "gaze" / "best.pt")
    assert list(model.config.feature_sizes) == ["t", "a", "e"] and model.context["e"].gru.input_size == 4
    assert model.amdm.discriminator[-1].out_features == 3                         # the discriminator tells three modalities
    train_MALN.main([f"--features={tmp_path / 'gaze.pkl'}", "--modalities=te", "--epochs=1", f"--out_dir={tmp_path}",
                     "--run_name=text_and_gaze", "--threads=1", *TINY])


def test_a_stream_that_is_no_modality_is_refused_not_dropped(tmp_path, monkeypatch):
    table, arrays = with_a_gaze_stream(tmp_path)
    monkeypatch.setitem(dataloader.MODALITIES, "e", "eye gaze")
    build_features(table, arrays, tmp_path / "gaze.pkl")
    monkeypatch.delitem(dataloader.MODALITIES, "e")
    with pytest.raises(DataError, match=r"gaze.pkl: holds the stream\(s\) 'e', which are no modality of dataloader.MODALITIES"):
        load_features(str(tmp_path / "gaze.pkl"))


class MeanOfPastTurns(nn.Module):
    """A context encoder of the documented interface: each utterance's features beside the mean of the
    same party's utterances up to it, projected to 7 numbers (an output size unlike the input's)."""

    def __init__(self, size, config):
        super().__init__()
        self.output_size = 7
        self.project = nn.Linear(2 * size, self.output_size)

    def forward(self, features, lengths, speakers, utterance_mask):
        # features (B, N, D), speakers (B, N), utterance_mask (B, N)
        same = (speakers.unsqueeze(2) == speakers.unsqueeze(1)) & utterance_mask.unsqueeze(1)      # (B, N, N)
        past = same & torch.ones_like(same).tril()                                                # causal, own party
        mean = (past.float() @ features) / past.sum(-1, keepdim=True).clamp(min=1)                # (B, N, D)
        return self.project(torch.cat([features, mean], -1))                                      # (B, N, 7)


def test_any_context_encoder_of_the_documented_interface_trains_and_its_checkpoint_rebuilds(tmp_path, monkeypatch):
    monkeypatch.setitem(MALN_model_fix.CONTEXT_ENCODERS, "mean_of_past_turns", MeanOfPastTurns)  # the recipe's one line
    feature_set = dataloader.make_demo(0, n_dialogues=(16, 4, 4))
    config = train_MALN.parse_overrides([*DEMO_SETTINGS, "--context_encoder=mean_of_past_turns", "--epochs=2",
                                         f"--out_dir={tmp_path}", "--run_name=swapped", "--export_features=False"])
    metrics = train_MALN.run(config, feature_set)
    assert np.isfinite(metrics["test_weighted_f1"])
    model = MALN.from_checkpoint(tmp_path / "swapped" / "best.pt")
    assert all(isinstance(model.context[m], MeanOfPastTurns) for m in "tav")
    assert model.amdm.specific["t"][0].in_features == 7 + config["speaker_size"]   # AMDM is built for the encoder's output
    with pytest.raises(SystemExit, match=r"--context_encoder=transformer: must be a name of MALN_model_fix.CONTEXT_ENCODERS"):
        train_MALN.parse_overrides(["--context_encoder=transformer"])
