"""The model from MALN.from_release computes what the authors' release computes, on the release's
own outputs: tests/data/release_reference.pt (small, in every clone; made by
tests/make_release_reference.py, which runs the release's code) and, where it is there,
../shared/data/release_reference.pt (the release at sizes nearer its own)."""

import os

import pytest
import torch

from conftest import ROOT, SHARED_DATA
import train_MALN
from MALN_model_fix import MALN

REFERENCES = {"small": os.path.join(ROOT, "tests", "data", "release_reference.pt"),
              "shared": os.path.join(SHARED_DATA, "release_reference.pt")}
NO_DROPOUT = dict(dropout=0.0, context_dropout=0.0, sclm_dropout=0.0, specific_dropout=0.0, common_dropout=0.0,
                  discriminator_dropout=0.0)
RELEASE_MODALITY = {"t": "text", "a": "audio", "v": "visual"}


@pytest.fixture(scope="module", params=sorted(REFERENCES))
def reference(request):
    path = REFERENCES[request.param]
    if request.param == "shared" and not os.path.exists(path):
        pytest.skip("../shared/data/release_reference.pt is not here")
    return torch.load(path, weights_only=True)


def inputs(batch):
    """The release's sequence-first batch as the batch this model reads (MALN.forward)."""
    features = {m: batch[name].transpose(0, 1) for m, name in RELEASE_MODALITY.items()}   # (B, N, D)
    utterance_mask = batch["umask"].bool()                                                   # (B, N)
    speakers = batch["qmask"].argmax(-1).transpose(0, 1)                                     # (B, N)
    return {"features": features, "speakers": speakers, "utterance_mask": utterance_mask,
            "lengths": utterance_mask.sum(1), "labels": batch["labels"].long()}


def test_release_weights_give_the_release_outputs(reference):
    model = MALN.from_release(reference["state_dict"])
    assert not model.training and model.config.feature_sizes == reference["feature_sizes"]
    for batch in reference["batches"]:
        expected = batch["eval"]
        with torch.no_grad():
            output = model(inputs(batch))
        torch.testing.assert_close(output["log_probs"], expected["log_probs"].transpose(0, 1), atol=1e-5, rtol=0)
        for m, name in RELEASE_MODALITY.items():
            torch.testing.assert_close(output["unimodal"][m], expected[f"log_probs_{name}"].transpose(0, 1), atol=1e-5, rtol=0)
            torch.testing.assert_close(output["specific"][m], expected[f"specific_{name}"], atol=1e-5, rtol=0)
            torch.testing.assert_close(output["common"][m], expected[f"common_{name}"], atol=1e-5, rtol=0)


def test_release_weights_give_the_release_losses(reference):
    model = MALN.from_release(reference["state_dict"], **NO_DROPOUT).train()
    for batch in reference["batches"]:
        expected = {k: v.item() for k, v in batch["train_without_dropout"].items()}
        losses = {k: v.item() for k, v in model(inputs(batch))["losses"].items()}
        adversarial = losses["adversarial_specific"] + losses["adversarial_common"]
        orthogonal = losses["orthogonal_specific"] + losses["orthogonal_common"]
        got = {**losses, "adversarial": adversarial, "adversarial_and_orthogonal": 0.01 * adversarial + 5e-6 * orthogonal}
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-6), name


def test_release_file_in_any_saved_form_loads(reference, tmp_path):
    state = reference["state_dict"]
    torch.save({"model_state_dict": state}, tmp_path / "release.pkl")
    torch.save(state, tmp_path / "bare.pt")
    batch = reference["batches"][0]
    with torch.no_grad():
        outputs = [MALN.from_release(str(path))(inputs(batch))["log_probs"] for path in (tmp_path / "release.pkl", tmp_path / "bare.pt")]
    torch.testing.assert_close(outputs[0], outputs[1])


def test_release_position_table_is_cut_to_the_model(reference):
    model = MALN.from_release(reference["state_dict"], max_positions=20)
    assert model.sclm["t"].transformers[0].positions.num_embeddings == 20
    expected = reference["state_dict"]["Text_Topic_Transformer_Lisener.pos_encoder.weight"][:20]
    torch.testing.assert_close(model.sclm["t"].transformers[0].positions.weight.detach(), expected)


def test_not_a_release_state_dict_is_refused_naming_the_first_missing_key(reference, tmp_path):
    state = dict(reference["state_dict"])
    del state["av_fc.weight"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"partial.pt: .*'av_fc.weight'"):
        MALN.from_release(str(tmp_path / "partial.pt"))
    torch.save({"model": {}}, tmp_path / "ours.pt")
    with pytest.raises(ValueError, match=r"ours.pt: not a state dict of the release's MALN \(no 'fc.3.weight'\)"):
        MALN.from_release(str(tmp_path / "ours.pt"))


def test_converted_release_checkpoint_predicts_like_the_release(reference, tmp_path):
    torch.save({"model_state_dict": reference["state_dict"]}, tmp_path / "release.pkl")
    train_MALN.main([f"--from_release={tmp_path / 'release.pkl'}", "--dataset=IEMOCAP", f"--out_dir={tmp_path}",
                     "--run_name=release"])
    model = MALN.from_checkpoint(str(tmp_path / "release" / "best.pt"))
    assert model.checkpoint["class_names"] == ["hap", "sad", "neu", "ang", "exc", "fru"]
    batch = reference["batches"][1]
    with torch.no_grad():
        torch.testing.assert_close(model(inputs(batch))["log_probs"], batch["eval"]["log_probs"].transpose(0, 1),
                                   atol=1e-5, rtol=0)
    with pytest.raises(SystemExit, match="exists"):
        train_MALN.main([f"--from_release={tmp_path / 'release.pkl'}", "--dataset=IEMOCAP", f"--out_dir={tmp_path}",
                         "--run_name=release"])
    with pytest.raises(SystemExit, match="has 6 classes"):
        train_MALN.main([f"--from_release={tmp_path / 'release.pkl'}", "--class_names=a,b", f"--out_dir={tmp_path}"])
