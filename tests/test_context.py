"""The speaker-aware context switches (issue: context that pays where the speakers change):
the party GRU reads each party's own turns and nothing of the others'; SCLM's vector acts on the
context vector when sclm_fusion says so; the released path is unchanged by either."""

import pytest
import torch
from torch import nn

from dataloader import Dialogue, collate
from MALN_model_fix import (MALN, ContextEncoder, JointPartyContextEncoder, MALNConfig, PartyChain, PartyContextEncoder,
                            PartyMeanContextEncoder, SpeakerContextEncoder)

SIZES = {"t": 6, "a": 4}


def party_encoder(size=6, encoder=PartyContextEncoder):
    config = MALNConfig(feature_sizes={"t": size}, n_classes=3, context_encoder="party_gru")
    return encoder(size, config).eval()


def a_batch(speakers, size=6):
    """Two dialogues of the given party sequences (the second shorter: padded), random features."""
    dialogues = [Dialogue(f"d{i}", {"t": torch.randn(len(s), size)}, torch.tensor(s), torch.zeros(len(s), dtype=torch.long))
                 for i, s in enumerate(speakers)]
    return collate(dialogues)


def along_party(encoder, batch, features):
    return encoder(features, batch["lengths"], batch["speakers"], batch["utterance_mask"])[..., 6:]   # (B, N, D)


def test_the_party_state_ignores_another_partys_turns_and_follows_its_own():
    encoder = party_encoder()
    batch = a_batch([[0, 1, 0, 2, 1, 0, 0], [1, 0, 1, 1]])
    features, speakers, real = batch["features"]["t"], batch["speakers"], batch["utterance_mask"]
    before = along_party(encoder, batch, features)
    changed = features.clone()
    changed[(speakers == 1) & real] += 3.0                                         # party 1's turns only
    after = along_party(encoder, batch, changed)
    party_1 = (speakers == 1) & real
    assert torch.equal(before[~party_1 & real], after[~party_1 & real])          # every other party: not a bit moved
    assert not torch.allclose(before[party_1], after[party_1])


def test_the_party_state_is_a_bidirectional_gru_over_that_partys_turns_alone():
    encoder = party_encoder()
    batch = a_batch([[0, 1, 0, 2, 1, 0, 0], [1, 0, 1, 1]])
    features = batch["features"]["t"]
    result = along_party(encoder, batch, features)
    gru = nn.GRU(6, 6, bidirectional=True, batch_first=True)
    gru.load_state_dict(encoder.gru.state_dict())
    for b, n in enumerate(batch["lengths"].tolist()):
        for party in batch["speakers"][b, :n].unique():
            turns = (batch["speakers"][b, :n] == party).nonzero().squeeze(1)
            expected = encoder.project(gru(features[b, turns].unsqueeze(0))[0])[0]
            assert torch.allclose(result[b, turns], expected, atol=1e-6)


def test_the_party_mean_gru_reads_each_turn_beside_its_partys_mean_and_nothing_of_the_others():
    torch.manual_seed(0)
    encoder = party_encoder(encoder=PartyMeanContextEncoder)
    batch = a_batch([[0, 1, 0, 2, 1, 0, 0], [1, 0, 1, 1]])
    features, speakers, real = batch["features"]["t"], batch["speakers"], batch["utterance_mask"]
    result = along_party(encoder, batch, features)
    gru = nn.GRU(12, 6, bidirectional=True, batch_first=True)
    gru.load_state_dict(encoder.gru.state_dict())
    for b, n in enumerate(batch["lengths"].tolist()):
        for party in speakers[b, :n].unique():
            turns = (speakers[b, :n] == party).nonzero().squeeze(1)
            own = features[b, turns]                                                  # (T, D)
            inputs = torch.cat([own, own.mean(0, keepdim=True).expand_as(own)], -1)    # (T, 2D)
            assert torch.allclose(result[b, turns], encoder.project(gru(inputs.unsqueeze(0))[0])[0], atol=1e-6)
    changed = features.clone()
    changed[(speakers == 1) & real] += 3.0                                         # party 1's turns only
    party_1 = (speakers == 1) & real
    assert torch.equal(result[~party_1 & real], along_party(encoder, batch, changed)[~party_1 & real])


def test_the_joint_party_gru_reads_every_modality_along_its_partys_turns_and_nothing_of_the_others():
    torch.manual_seed(0)
    config = MALNConfig(feature_sizes=SIZES, n_classes=3, context_encoder="party_joint_gru")
    encoder = JointPartyContextEncoder(6, config).eval()
    batch = a_batch([[0, 1, 0, 2, 1, 0, 0], [1, 0, 1, 1]])
    features, speakers, real = batch["features"]["t"], batch["speakers"], batch["utterance_mask"]
    every = torch.cat([features, torch.randn(*features.shape[:2], 4)], -1)           # (B, N, 6 + 4): t beside a
    result = encoder(features, batch["lengths"], speakers, real, every_modality=every)[..., 6:]
    gru = nn.GRU(10, 6, bidirectional=True, batch_first=True)
    gru.load_state_dict(encoder.gru.state_dict())
    for b, n in enumerate(batch["lengths"].tolist()):
        for party in speakers[b, :n].unique():
            turns = (speakers[b, :n] == party).nonzero().squeeze(1)
            assert torch.allclose(result[b, turns], encoder.project(gru(every[b, turns].unsqueeze(0))[0])[0], atol=1e-6)
    changed = every.clone()
    changed[..., 6:][(speakers == 1) & real] += 3.0                                   # party 1's other modality only
    after = encoder(features, batch["lengths"], speakers, real, every_modality=changed)[..., 6:]
    party_1 = (speakers == 1) & real
    assert torch.equal(result[~party_1 & real], after[~party_1 & real])
    assert not torch.allclose(result[party_1], after[party_1])


@pytest.mark.parametrize("encoder", ["party_gru", "party_joint_gru"])
def test_one_modalitys_unimodal_prediction_reads_another_modality_only_through_the_joint_party_gru(encoder):
    torch.manual_seed(0)
    model = MALN(MALNConfig(feature_sizes=SIZES, n_classes=3, hidden_size=8, cross_heads=2, sclm_mode="off",
                            context_encoder=encoder)).eval()
    dialogues = [Dialogue(f"d{i}", {m: torch.randn(len(s), d) for m, d in SIZES.items()}, torch.tensor(s),
                          torch.zeros(len(s), dtype=torch.long)) for i, s in enumerate([[0, 1, 0, 1, 1], [1, 0, 0]])]
    batch = collate(dialogues)
    before = model(batch)["unimodal"]["t"]
    batch["features"]["a"] = batch["features"]["a"] + 3.0                            # audio only
    after = model(batch)["unimodal"]["t"]
    real = batch["utterance_mask"]
    assert torch.equal(before[real], after[real]) == (encoder == "party_gru")


@pytest.mark.parametrize("fusion", ["gate", "correct"])
def test_sclm_acts_on_the_context_vector_and_with_a_zero_map_leaves_it_as_it_is(fusion):
    torch.manual_seed(0)
    model = MALN(MALNConfig(feature_sizes=SIZES, n_classes=3, hidden_size=8, speaker_size=4, cross_heads=2,
                            sclm_mode="speaker", sclm_fusion=fusion)).eval()
    assert model.amdm.specific["t"][0].in_features == model.context["t"].output_size      # no SCLM columns concatenated
    context, speaker = torch.randn(2, 5, 6), torch.randn(2, 5, 4)
    assert not torch.allclose(model.speaker_fused("t", context, speaker), context)
    with torch.no_grad():
        model.fusion["t"].weight.zero_()
        model.fusion["t"].bias.zero_()
    assert torch.allclose(model.speaker_fused("t", context, speaker), context)


def test_the_released_path_has_no_fusion_map_and_concatenates_sclm():
    model = MALN(MALNConfig(feature_sizes=SIZES, n_classes=3, hidden_size=8, speaker_size=4, cross_heads=2))
    assert not hasattr(model, "fusion")
    assert model.amdm.specific["t"][0].in_features == 6 + 4
    context, speaker = torch.randn(2, 5, 6), torch.randn(2, 5, 4)
    assert torch.equal(model.speaker_fused("t", context, speaker), torch.cat([context, speaker], -1))


def test_the_speaker_gru_reads_who_speaks_and_the_plain_gru_does_not():
    torch.manual_seed(0)
    config = MALNConfig(feature_sizes={"t": 6}, n_classes=3, context_encoder="speaker_gru")
    batch = a_batch([[0, 1, 0, 1, 1], [1, 0, 0]])
    features, lengths, real = batch["features"]["t"], batch["lengths"], batch["utterance_mask"]
    swapped = (1 - batch["speakers"]).clamp(min=0)                                  # the same turns, the parties swapped
    for encoder, reads_speakers in ((SpeakerContextEncoder(6, config).eval(), True), (ContextEncoder(6, config).eval(), False)):
        before = encoder(features, lengths, batch["speakers"], real)
        after = encoder(features, lengths, swapped, real)
        assert before.shape == (2, 5, 6) and torch.equal(before, after) != reads_speakers


def test_the_utterance_skip_hands_amdm_each_utterances_own_features_beside_its_context():
    torch.manual_seed(0)
    batch = a_batch([[0, 1, 0, 1, 1], [1, 0, 0]])
    seen = {}
    for skip in (False, True):
        model = MALN(MALNConfig(feature_sizes={"t": 6}, n_classes=3, sclm_mode="off", utterance_skip=skip)).eval()
        model.amdm.register_forward_hook(lambda _, inputs, __, skip=skip: seen.__setitem__(skip, inputs[0]["t"]))
        model(batch)
    real = batch["utterance_mask"]
    assert seen[False].shape == (2, 5, 6) and seen[True].shape == (2, 5, 12)
    assert torch.equal(seen[True][..., 6:][real], batch["features"]["t"][real])


def chain_inputs():
    """A PartyChain of 3 classes with persisting transitions, and scores of two dialogues (the second padded)."""
    torch.manual_seed(0)
    chain = PartyChain(3)
    with torch.no_grad():
        chain.transition_logits.copy_(2 * torch.eye(3) + 0.3 * torch.randn(3, 3))
    speakers = torch.tensor([[0, 1, 0, 2, 1, 0, 0], [1, 0, 1, 1, 0, 0, 0]])
    real = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    return chain, torch.randn(2, 7, 3).log_softmax(-1), speakers, real


def test_the_party_chain_gives_each_turn_its_exact_posterior_along_its_partys_turns():
    chain, scores, speakers, real = chain_inputs()
    result = chain(scores, speakers, real)
    log_transition = chain.transition_logits.log_softmax(-1)
    for b in range(2):
        for party in speakers[b][real[b]].unique():
            turns = ((speakers[b] == party) & real[b]).nonzero().squeeze(1)
            paths = torch.cartesian_prod(*[torch.arange(3)] * len(turns)).reshape(-1, len(turns))  # (3^T, T) every path
            score = scores[b, turns].gather(1, paths.T).sum(0) + log_transition[paths[:, :-1], paths[:, 1:]].sum(1)
            weight = score.softmax(0)                                                             # (3^T,) posterior
            expected = torch.stack([torch.zeros(3).index_add(0, paths[:, t], weight) for t in range(len(turns))])
            assert torch.allclose(result[b, turns].exp(), expected, atol=1e-5)


def test_the_party_chain_ignores_another_partys_turns():
    chain, scores, speakers, real = chain_inputs()
    before = chain(scores, speakers, real)
    changed = scores.clone()
    party_1 = (speakers == 1) & real
    changed[party_1] = torch.randn(int(party_1.sum()), 3).log_softmax(-1)
    after = chain(changed, speakers, real)
    assert torch.equal(before[~party_1 & real], after[~party_1 & real])
    assert not torch.allclose(before[party_1], after[party_1])


def test_the_party_chain_starts_uniform_and_then_changes_nothing():
    _, scores, speakers, real = chain_inputs()
    assert torch.allclose(PartyChain(3)(scores, speakers, real)[real], scores[real], atol=1e-6)


def test_a_model_with_the_party_chain_learns_its_transitions_and_the_released_model_has_none():
    torch.manual_seed(0)
    batch = a_batch([[0, 1, 0, 1, 1], [1, 0, 0]])
    batch["labels"] = torch.where(batch["utterance_mask"], 1, -1)
    model = MALN(MALNConfig(feature_sizes={"t": 6}, n_classes=3, sclm_mode="off", party_chain=True))
    model(batch)["losses"]["total"].backward()
    assert model.chain.transition_logits.grad.abs().sum() > 0
    assert MALN(MALNConfig(feature_sizes={"t": 6}, n_classes=3)).chain is None


def test_the_party_chain_starts_at_the_training_labels_turn_to_turn_frequencies():
    dialogues = [Dialogue("d0", {"t": torch.zeros(6, 6)}, torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 2, 0, 2, 1, -1])),
                 Dialogue("d1", {"t": torch.zeros(3, 6)}, torch.tensor([1, 1, 1]), torch.tensor([1, 1, 2]))]
    model = MALN(MALNConfig(feature_sizes={"t": 6}, n_classes=3, sclm_mode="off", party_chain=True))
    model.fit_chain(dialogues)
    # party turns: 0 0 1 | 2 2 (the -1 skipped) | 1 1 2 -> 0->0, 0->1, 2->2, 1->1, 1->2; each count + 1
    expected = torch.tensor([[2, 2, 1], [1, 2, 2], [1, 1, 2]], dtype=torch.float64)
    assert torch.allclose(model.chain.transition_logits.double().exp(), expected / expected.sum(1, keepdim=True))
