"""The cuda path: cuDNN's GRU against the cpu GRU, bf16 autocast, exported vectors on a device.
Tests of cuda alone skip without a cuda device; `pytest -k cuda` selects every cuda test."""

import copy
from dataclasses import fields

import numpy as np
import pytest
import torch

import train_MALN
from conftest import DEMO_SETTINGS
from dataloader import Dialogue, collate, make_demo, to_device
from MALN_model_fix import MALN, MALNConfig

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no cuda device")
SIZES = {"t": 12, "a": 6, "v": 8}
NO_DROPOUT = {f.name: 0.0 for f in fields(MALNConfig) if f.name.endswith("dropout")}  # the two devices draw other masks


def small_model():
    return MALN(MALNConfig(feature_sizes=SIZES, n_classes=4, hidden_size=16, speaker_size=8, cross_heads=4,
                           discriminator_hidden=8, sclm_feedforward=16, **NO_DROPOUT))


def small_batch():
    """Three dialogues of unequal lengths (padding and a packed GRU at work), 2 or 3 speakers, some unlabelled."""
    dialogues = []
    for n, parties in ((9, 2), (4, 3), (13, 2)):
        labels = torch.randint(0, 4, (n,))
        labels[::5] = -1
        dialogues.append(Dialogue(f"d{n}", {m: torch.randn(n, d) for m, d in SIZES.items()}, torch.arange(n) % parties, labels))
    return collate(dialogues)


def outputs_and_gradients(model, batch, device):
    batch = to_device(batch, device)
    output = model(batch)
    output["losses"]["total"].backward()
    mask = batch["utterance_mask"]
    return ({"log_probs": output["log_probs"][mask], "fused": output["fused"][mask], "loss": output["losses"]["total"]},
            {name: p.grad for name, p in model.named_parameters() if p.grad is not None})


@requires_cuda
def test_cpu_and_cuda_give_the_same_outputs_and_gradients_in_fp32(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn.rnn, "fp32_precision", "ieee")  # cuDNN's GRU defaults to TF32 for fp32
    model = small_model().train()
    batch = small_batch()
    on_cpu = outputs_and_gradients(model, batch, torch.device("cpu"))
    on_cuda = outputs_and_gradients(copy.deepcopy(model).cuda(), batch, torch.device("cuda"))
    for name, value in on_cpu[0].items():
        assert torch.allclose(value, on_cuda[0][name].cpu(), rtol=1e-4, atol=1e-5), name
    assert on_cpu[1].keys() == on_cuda[1].keys()
    different = [name for name, grad in on_cpu[1].items() if not torch.allclose(grad, on_cuda[1][name].cpu(), rtol=1e-3, atol=1e-6)]
    assert different == []


@requires_cuda
def test_bf16_autocast_on_cuda_stays_near_fp32():
    model = small_model().cuda().eval()
    batch = to_device(small_batch(), torch.device("cuda"))
    exact = model(batch)
    with train_MALN.autocast(torch.device("cuda"), True):
        mixed = model(batch)
    mask = batch["utterance_mask"]
    assert torch.isfinite(mixed["log_probs"][mask]).all()
    assert (mixed["log_probs"][mask].float() - exact["log_probs"][mask]).abs().max() < 0.05
    assert mixed["losses"]["total"].float().item() == pytest.approx(exact["losses"]["total"].item(), rel=0.02)


@pytest.mark.parametrize("amp", [False, pytest.param(True, marks=requires_cuda, id="bf16-cuda")])
def test_a_run_on_the_device_exports_vectors_that_agree_with_its_metrics(tmp_path, device, amp):
    if amp and device == "cpu":
        pytest.skip("autocast is cuda only")
    feature_set = make_demo(0, n_dialogues=(16, 4, 4))
    config = train_MALN.parse_overrides([*DEMO_SETTINGS, f"--out_dir={tmp_path}", "--run_name=run", "--epochs=2", "--batch_size=8",
                                         f"--device={device}", f"--amp={amp}"])
    metrics = train_MALN.run(config, feature_set)
    exported = np.load(tmp_path / "run" / "features_test.npz")
    n_test = sum(len(d) for d in feature_set.splits["test"])
    assert exported["fused"].shape[0] == n_test and exported["fused"].dtype == np.float32
    assert np.isfinite(exported["fused"]).all() and np.isfinite(metrics["test_weighted_f1"])
    labelled = exported["label"] >= 0
    assert 100 * np.mean(exported["prediction"][labelled] == exported["label"][labelled]) == pytest.approx(metrics["test_accuracy"])
    loaded = MALN.from_checkpoint(str(tmp_path / "run" / "best.pt"), device)
    assert next(loaded.parameters()).device.type == device
