import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import train_MALN
from training.configurator import MODEL_KEYS
from dataloader import Dialogue, collate
from MALN_model_fix import MALN, MALNConfig, GradientReversal, difference_loss
from maln.gru import cudnn_bidirectional_gru_layer, stacked_bidirectional_gru

SIZES = {"t": 12, "a": 6, "v": 8}


def dialogue(n, n_parties, sizes=SIZES, n_classes=4):
    return Dialogue(f"d{n}", {m: torch.randn(n, d) for m, d in sizes.items()},
                    torch.arange(n) % n_parties, torch.randint(0, n_classes, (n,)))


def model_for(sizes=SIZES, **kwargs):
    return MALN(MALNConfig(feature_sizes=sizes, n_classes=4, hidden_size=16, speaker_size=8, cross_heads=4,
                           discriminator_hidden=8, **kwargs)).eval()


def forward(model, dialogues, **kwargs):
    batch = collate(dialogues)
    return model(batch, **kwargs)


def test_the_model_config_defaults_are_the_settings_of_the_released_preset():
    released, defaults = train_MALN.parse_overrides(["--preset=released"]), MALNConfig()
    assert {k: getattr(defaults, k) for k in MODEL_KEYS} == {k: released[k] for k in MODEL_KEYS}


@pytest.mark.parametrize("change, message", [
    ({"dropout": 2.0}, r"^dropout=2.0: must be a number in \[0, 1\)$"),
    ({"sclm_mode": "paper"}, r"^sclm_mode='paper': must be 'speaker', 'utterance', 'release' or 'off'$"),
    ({"cross_heads": 3}, r"^cross_heads=3: must be a whole number >= 1 that divides hidden_size$"),
])
def test_a_model_value_out_of_its_rule_is_one_line_naming_the_field_and_what_it_may_be(change, message):
    with pytest.raises(ValueError, match=message):
        MALNConfig(**change)


@pytest.mark.parametrize("sclm_mode", ["speaker", "utterance", "release", "off"])
@pytest.mark.parametrize("n_parties", [2, 9])
def test_shapes_for_two_and_nine_speakers(sclm_mode, n_parties):
    model = model_for(sclm_mode=sclm_mode)
    output = forward(model, [dialogue(12, n_parties), dialogue(9, n_parties)])
    assert output["log_probs"].shape == (2, 12, 4)
    assert output["fused"].shape == (2, 12, 3 * 16)
    assert all(output["common"][m].shape == (2, 12, 16) and output["specific"][m].shape == (2, 12, 16) for m in SIZES)
    assert torch.isfinite(output["losses"]["total"])


@pytest.mark.parametrize("options", [{}, {"sclm_mode": "release"}, {"sclm_mode": "utterance"}, {"cross_input": "specific"},
                                     {"cross_attention": False}])
def test_padding_changes_no_real_output(options):
    model = model_for(**options)
    short, long = dialogue(5, 3), dialogue(11, 7)
    alone = forward(model, [short])
    padded = forward(model, [short, long])
    assert torch.allclose(alone["log_probs"][0], padded["log_probs"][0, :5], atol=1e-5)
    assert torch.allclose(alone["fused"][0], padded["fused"][0, :5], atol=1e-5)


def test_standardizer_uses_training_statistics_and_keeps_padding_inert():
    torch.manual_seed(0)
    train = [dialogue(n, 2) for n in (6, 9, 14)]
    for d in train:
        d.features["t"] = 5 + 3 * d.features["t"]
        d.features["t"][:, 0] = 2.0                                  # a constant dimension
    model = model_for(standardize=True)
    model.fit_standardizer(train)
    standardized = model.standardizer["t"](torch.cat([d.features["t"] for d in train]))
    assert torch.allclose(standardized[:, 1:].mean(0), torch.zeros(11), atol=1e-5)
    assert torch.allclose(standardized[:, 1:].std(0, correction=0), torch.ones(11), atol=1e-4)
    assert torch.all(standardized[:, 0] == 0)
    short = train[0]
    alone, padded = forward(model, [short]), forward(model, [short, train[2]])
    assert torch.allclose(alone["log_probs"][0], padded["log_probs"][0, :6], atol=1e-5)
    assert "standardizer.t.mean" in model.state_dict()                # travels with the checkpoint


@pytest.mark.parametrize("sclm_mode", ["speaker", "utterance"])
def test_speaker_vector_depends_only_on_own_utterances(sclm_mode):
    model = model_for(sclm_mode=sclm_mode)
    d = dialogue(10, 2)
    before = model.sclm["t"](d.features["t"][None], d.speakers[None], 2, torch.ones(1, 10, dtype=torch.bool))
    d.features["t"][d.speakers == 1] += torch.randn(5, 12)  # change only party 1's utterances
    after = model.sclm["t"](d.features["t"][None], d.speakers[None], 2, torch.ones(1, 10, dtype=torch.bool))
    party0 = d.speakers == 0
    assert torch.allclose(before[0, party0], after[0, party0], atol=1e-6)
    assert not torch.allclose(before[0, ~party0], after[0, ~party0], atol=1e-3)


def test_layer_by_layer_gru_matches_nn_gru_outputs_and_gradients(device):
    gru = torch.nn.GRU(6, 5, num_layers=2, bidirectional=True, batch_first=True).double().to(device)
    x = torch.randn(5, 9, 6, dtype=torch.double, device=device, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor([5, 9, 1, 7, 9]), batch_first=True, enforce_sorted=False)
    reference, ours = gru(packed)[0].data, stacked_bidirectional_gru(gru, packed.data, packed.batch_sizes)
    assert torch.allclose(ours, reference, atol=1e-12)
    weights = torch.randn_like(reference)
    inputs = [x, *gru.parameters()]
    expected = torch.autograd.grad((reference * weights).sum(), inputs, retain_graph=True)
    for got, want in zip(torch.autograd.grad((ours * weights).sum(), inputs), expected):
        assert torch.allclose(got, want, atol=1e-12)


def test_release_sclm_gives_party_0_the_first_summary_and_every_other_party_the_second():
    model = model_for(sclm_mode="release")
    d = dialogue(9, 4)                                                         # parties 0, 1, 2, 3, 0, 1, ...
    features, speakers, mask = d.features["t"][None], d.speakers[None], torch.ones(1, 9, dtype=torch.bool)
    sclm = model.sclm["t"]
    vectors = sclm(features, speakers, 4, mask)[0]                              # (N, speaker_size)
    allowed = torch.ones(1, 10, 10, dtype=torch.bool)
    first, second = (sclm.project(t(features, 1, allowed))[0, 0] for t in sclm.transformers)  # (speaker_size,) each
    assert not torch.allclose(first, second, atol=1e-3)
    for position, party in enumerate(d.speakers.tolist()):
        torch.testing.assert_close(vectors[position], first if party == 0 else second)


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(5, 3, requires_grad=True)
    y = GradientReversal.apply(x, 0.5)
    assert torch.equal(y, x)
    (y * 2).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -1.0))


def test_difference_loss_is_the_mean_over_dialogues_of_the_frobenius_norm_over_real_utterances():
    a, b = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3], dtype=torch.bool)
    expected = sum(((a[i, mask[i]] @ b[i, mask[i]].T) ** 2).sum() for i in range(2)) / 2
    assert torch.allclose(difference_loss(a, b, mask), expected, rtol=1e-5)
    b_padding_changed = b.clone()
    b_padding_changed[1, 3:] = 100.0
    assert torch.allclose(difference_loss(a, b_padding_changed, mask), expected, rtol=1e-5)
    orthogonal = torch.zeros(1, 3, 4)
    orthogonal[0, :, 0], other = 1.0, torch.zeros(1, 3, 4)
    other[0, :, 1] = 1.0
    assert difference_loss(orthogonal, other, torch.ones(1, 3, dtype=torch.bool)) == 0


def test_common_encoders_get_the_reversed_discriminator_gradient():
    model = model_for().train()
    model.amdm.specific.requires_grad_(False)
    d = [dialogue(8, 2), dialogue(6, 3)]
    batch = collate(d)

    def gradients(reversal):
        model.zero_grad()
        model.amdm.config.gradient_reversal = reversal
        output = model({**batch, "labels": None})
        loss = model.amdm.adversarial_losses(output["specific"], output["common"], batch["utterance_mask"])["adversarial_common"]
        loss.backward()
        return model.amdm.shared_common[0].weight.grad.clone(), model.amdm.discriminator[0].weight.grad.clone()

    torch.manual_seed(1)
    encoder_reversed, discriminator_reversed = gradients(1.0)
    torch.manual_seed(1)
    encoder_plain, discriminator_plain = gradients(-1.0)  # -lambda = +1: a plain, unreversed gradient
    assert torch.allclose(encoder_reversed, -encoder_plain, atol=1e-6)
    assert torch.allclose(discriminator_reversed, discriminator_plain, atol=1e-6)


def test_discriminator_learns_to_tell_specific_vectors_apart():
    model = model_for().train()
    d = [dialogue(8, 2), dialogue(6, 3)]
    batch = collate(d)
    optimizer = torch.optim.Adam(model.amdm.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        output = model({**batch, "labels": None})
        loss = model.amdm.adversarial_losses(output["specific"], output["common"], batch["utterance_mask"])["adversarial_specific"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.9  # about ln 3 at the start
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("modalities", ["t", "a", "ta", "tv", "av"])
def test_any_subset_of_modalities_runs(modalities):
    sizes = {m: SIZES[m] for m in modalities}
    output = forward(model_for(sizes), [dialogue(7, 2, sizes), dialogue(4, 2, sizes)])
    assert output["log_probs"].shape == (2, 7, 4)
    assert torch.isfinite(output["losses"]["total"])
    assert ("adversarial_common" in output["losses"]) == (len(modalities) > 1)


def test_ablation_switches_remove_their_losses():
    output = forward(model_for(adversarial=False, orthogonality=False), [dialogue(7, 2)])
    assert set(output["losses"]) == {"classification", "unimodal", "total"}


def test_text_only_fuses_its_common_vector_once():
    sizes = {"t": 12}
    output = forward(model_for(sizes), [dialogue(7, 2, sizes)])
    assert torch.equal(output["fused"], output["common"]["t"])
    output = forward(model_for(sizes, cross_input="specific"), [dialogue(7, 2, sizes)])
    assert torch.equal(output["fused"], torch.cat([output["specific"]["t"], output["common"]["t"]], -1))


def test_each_loss_term_matches_a_hand_computation():
    model = model_for(unimodal_weight=0.3, adversarial_weight=0.2, orthogonality_weight=0.05)
    dialogues = [dialogue(7, 2), dialogue(4, 3)]
    batch = collate(dialogues)
    output = forward(model, dialogues)
    losses, real, labels = output["losses"], batch["utterance_mask"], batch["labels"][batch["utterance_mask"]]
    nll = {m: F.nll_loss(output["unimodal"][m][real], labels) for m in SIZES}
    torch.testing.assert_close(losses["classification"], F.nll_loss(output["log_probs"][real], labels))
    torch.testing.assert_close(losses["unimodal"], nll["t"] + nll["a"] + nll["v"])
    for kind in ("specific", "common"):  # the target of every modality is its index in 'tav', on both branches
        expected = sum(F.cross_entropy(model.amdm.discriminator(output[kind][m][real]), torch.full((11,), index))
                       for index, m in enumerate("tav"))
        torch.testing.assert_close(losses[f"adversarial_{kind}"], expected)

    def frobenius(x, y):  # mean over the two dialogues of ||X Y^T||^2 over real utterances
        return sum(((x[b, real[b]] @ y[b, real[b]].T) ** 2).sum() for b in range(2)) / 2

    specific, common = output["specific"], output["common"]
    torch.testing.assert_close(losses["orthogonal_specific"], frobenius(specific["t"], specific["a"])
                               + frobenius(specific["t"], specific["v"]) + frobenius(specific["a"], specific["v"]))
    torch.testing.assert_close(losses["orthogonal_common"], sum(frobenius(common[m], specific[m]) for m in SIZES))
    torch.testing.assert_close(losses["total"], losses["classification"] + 0.3 * losses["unimodal"]
                               + 0.2 * (losses["adversarial_specific"] + losses["adversarial_common"])
                               + 0.05 * (losses["orthogonal_specific"] + losses["orthogonal_common"]))


def test_cpu_gru_applies_dropout_between_layers_in_training_only():
    gru = torch.nn.GRU(6, 5, num_layers=2, bidirectional=True, batch_first=True, dropout=0.5)
    packed = pack_padded_sequence(torch.randn(3, 7, 6), torch.tensor([7, 4, 2]), batch_first=True, enforce_sorted=False)
    evaluated = stacked_bidirectional_gru(gru.eval(), packed.data, packed.batch_sizes)
    assert torch.allclose(evaluated, gru(packed)[0].data, atol=1e-6)
    trained = stacked_bidirectional_gru(gru.train(), packed.data, packed.batch_sizes)
    assert not torch.allclose(trained, evaluated, atol=1e-3)


def test_the_cuda_layer_call_stacks_to_nn_gru(device):
    """cudnn_bidirectional_gru_layer passes each layer's weights in nn.GRU's order: checked here on cpu too
    (ATen's own GRU behind the same call), so a wrong order does not wait for a GPU to show."""
    gru = torch.nn.GRU(6, 5, num_layers=2, bidirectional=True, batch_first=True).double().to(device).eval()
    packed = pack_padded_sequence(torch.randn(5, 9, 6, dtype=torch.double, device=device), torch.tensor([5, 9, 1, 7, 9]),
                                  batch_first=True, enforce_sorted=False)
    data = packed.data
    for layer in range(2):
        weights = [getattr(gru, f"{name}_l{layer}{suffix}") for suffix in ("", "_reverse")
                   for name in ("weight_ih", "bias_ih", "weight_hh", "bias_hh")]
        data = cudnn_bidirectional_gru_layer(weights, data, packed.batch_sizes, False)
    torch.testing.assert_close(data, gru(packed)[0].data, rtol=0, atol=1e-12)


def test_gru_dropout_between_layers_repeats_under_the_same_torch_seed(device):
    """The masks between the layers come from torch's generator on every device (cuDNN's own dropout
    state is not in torch's RNG state, so a resumed run could not repeat it)."""
    gru = torch.nn.GRU(6, 5, num_layers=2, bidirectional=True, batch_first=True, dropout=0.5).to(device).train()
    packed = pack_padded_sequence(torch.randn(3, 7, 6, device=device), torch.tensor([7, 4, 2]), batch_first=True,
                                  enforce_sorted=False)
    outputs = []
    for _ in range(2):
        torch.manual_seed(1)
        outputs.append(stacked_bidirectional_gru(gru, packed.data, packed.batch_sizes))
    assert torch.equal(*outputs)
    assert not torch.allclose(outputs[0], stacked_bidirectional_gru(gru, packed.data, packed.batch_sizes), atol=1e-3)


def test_input_dropout_zeroes_features_in_training_only():
    torch.manual_seed(0)
    model = model_for(input_dropout=0.5, sclm_mode="off", dropout=0.0, context_dropout=0.0, specific_dropout=0.0,
                      common_dropout=0.0, discriminator_dropout=0.0)
    reference = model_for(input_dropout=0.0, sclm_mode="off", dropout=0.0, context_dropout=0.0, specific_dropout=0.0,
                          common_dropout=0.0, discriminator_dropout=0.0)
    reference.load_state_dict(model.state_dict())
    dialogues = [dialogue(7, 2)]
    assert torch.equal(forward(model, dialogues)["log_probs"], forward(reference, dialogues)["log_probs"])   # eval: off
    model.train(), reference.train()
    seen = []
    model.context["t"].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    forward(model, dialogues)
    zeroed = (seen[0] == 0).float().mean()
    assert 0.3 < zeroed < 0.7                                    # about half of the text features dropped
    assert not torch.equal(forward(model, dialogues)["log_probs"], forward(reference, dialogues)["log_probs"])
