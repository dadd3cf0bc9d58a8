"""benchmarks/dialoguernn.py: the peer is trained from a conv-emotion checkout's own model.py and scored by
this repository's protocol (the epoch selected on valid, never on test)."""

import numpy as np
import pytest

from benchmarks import dialoguernn, records
from layouts import cosmic_iemocap

FAKE_MODEL = '''
import torch
from torch import nn


class BiModel(nn.Module):  # the interface of conv-emotion's DialogueRNN.BiModel, a linear layer inside
    def __init__(self, D_m, D_g, D_p, D_e, D_h, n_classes=7, **kwargs):
        super().__init__()
        self.linear = nn.Linear(D_m, n_classes)

    def forward(self, U, qmask, umask, att2=True):
        return torch.log_softmax(self.linear(U), -1), None, None, None


class MaskedNLLLoss(nn.Module):
    def __init__(self, weight=None):
        super().__init__()

    def forward(self, pred, target, mask):
        return nn.functional.nll_loss(pred, target)
'''


@pytest.fixture
def checkout(tmp_path):
    (tmp_path / "conv-emotion" / "DialogueRNN").mkdir(parents=True)
    (tmp_path / "conv-emotion" / "DialogueRNN" / "model.py").write_text(FAKE_MODEL)
    cosmic_iemocap(tmp_path / "features.pkl", size=16)
    return tmp_path


def test_the_peer_reports_test_at_the_epoch_validation_chose(checkout, monkeypatch):
    monkeypatch.setattr(records, "MEASURED_DIR", str(checkout / "measured"))
    scripted = iter([(0.0, 50.0), (30.0, 0.0), (60.0, 0.0),   # epoch 1: train, valid, test
                     (0.0, 50.0), (50.0, 0.0), (20.0, 0.0),   # epoch 2: the best valid
                     (0.0, 50.0), (40.0, 0.0), (70.0, 0.0)])  # epoch 3: the best test
    monkeypatch.setattr(dialoguernn, "run_epoch", lambda *args, **kwargs: next(scripted))
    dialoguernn.main([f"--conv_emotion={checkout / 'conv-emotion'}", f"--features={checkout / 'features.pkl'}",
                      "--epochs=3", "--record=peer"])
    row = records.read_record("peer")["table"]["rows"][0]
    assert row[2:] == ["2", "50.00", "20.00", "70.00"]


def test_one_epoch_of_the_checkouts_model_trains_and_scores(checkout):
    best, history = dialoguernn.train({**dialoguernn.OPTIONS, "conv_emotion": str(checkout / "conv-emotion"),
                                       "features": str(checkout / "features.pkl"), "epochs": 2})
    assert len(history) == 2 and all(0 <= h["test_weighted_f1"] <= 100 for h in history)
    assert best["valid_weighted_f1"] == max(h["valid_weighted_f1"] for h in history)
    assert np.isfinite(best["train_accuracy"])


def test_a_folder_that_is_not_a_conv_emotion_checkout_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no DialogueRNN/model.py there"):
        dialoguernn.main([f"--conv_emotion={tmp_path}", f"--features={tmp_path / 'f.pkl'}"])
