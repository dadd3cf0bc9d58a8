"""Training bookkeeping (issue 20): what is fitted on which split, comparable losses, the learning-rate
schedule and its resumption, the splits --predict and --select_on use, the heads --from_release takes,
where a NaN loss stops."""

import copy
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch

import layouts
from training import probes
import train_MALN
from conftest import DEMO_SETTINGS, SHARED_DATA
from dataloader import Dialogue, load_features, make_batches, make_demo, read_pickle, split_validation
from MALN_model_fix import MALN, MALNConfig
from maln.files import load_checkpoint


def tiny_demo(n_dialogues=(16, 4, 4)):
    return make_demo(0, n_dialogues=n_dialogues)


def arguments(tmp_path, run_name, *overrides):
    return [*DEMO_SETTINGS, f"--out_dir={tmp_path}", f"--run_name={run_name}", "--batch_size=8", "--export_features=False",
            "--device=cpu", *overrides]


def run(tmp_path, run_name, *overrides, feature_set=None):
    return train_MALN.run(train_MALN.parse_overrides(arguments(tmp_path, run_name, *overrides)), feature_set or tiny_demo())


def labels_of(dialogues):
    return torch.cat([d.labels for d in dialogues])


# ----------------------------------------------------------------------------- fitted on train only

def test_the_standardiser_of_a_built_model_sees_only_the_train_split():
    feature_set = tiny_demo()
    before = train_MALN.build_model(feature_set, train_MALN.parse_overrides([])).standardizer.state_dict()
    for split in ("valid", "test"):
        for d in feature_set.splits[split]:
            d.features = {m: 100 * x + 7 for m, x in d.features.items()}
    after = train_MALN.build_model(feature_set, train_MALN.parse_overrides([])).standardizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    train = torch.cat([d.features["t"] for d in feature_set.splits["train"]]).double()
    torch.testing.assert_close(after["t.mean"], train.mean(0).float())


def test_class_weights_follow_the_train_split_by_the_documented_formula(tmp_path, monkeypatch):
    feature_set = tiny_demo()
    train_labels, test_labels = labels_of(feature_set.splits["train"]), labels_of(feature_set.splits["test"])
    counts = torch.bincount(train_labels[train_labels >= 0], minlength=4).float()
    expected = counts.sum() / (4 * counts)                                       # n / (classes x n_c), README
    from_test = torch.bincount(test_labels[test_labels >= 0], minlength=4).float()
    assert not torch.allclose(expected, from_test.sum() / (4 * from_test))     # the splits tell the two apart
    seen, forward = [], MALN.forward

    def recording(self, *args, **kwargs):
        seen.append(args[1] if len(args) > 1 else kwargs.get("class_weights"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MALN, "forward", recording)
    run(tmp_path, "weighted", "--epochs=1", "--class_weights=True", feature_set=feature_set)
    assert seen and all(torch.equal(weights, expected) for weights in seen)


def test_the_weighted_classification_loss_on_a_hand_worked_case():
    model = MALN(MALNConfig(feature_sizes={"t": 4}, n_classes=2, sclm_mode="off", hidden_size=4)).eval()
    labels = torch.tensor([[0, 1, -1]])                                          # the third utterance unlabelled
    log_probs = torch.log(torch.tensor([[[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]]]))
    weights = torch.tensor([3.0, 1.0])
    losses = model.losses(log_probs, {"t": log_probs}, {"t": torch.zeros(1, 3, 4)}, {"t": torch.zeros(1, 3, 4)},
                          torch.ones(1, 3, dtype=torch.bool), labels, weights)
    # (3 x -log 0.5 + 1 x -log 0.8) / (3 + 1)
    assert losses["classification"].item() == pytest.approx((3 * math.log(2) - math.log(0.8)) / 4)


def test_the_decomposition_probes_are_fitted_on_train_vectors_and_scored_on_test_vectors(tmp_path):
    metrics = run(tmp_path, "probes", "--epochs=1", "--export_features=True")
    vectors = {split: dict(np.load(tmp_path / "probes" / f"features_{split}.npz")) for split in ("train", "test")}
    assert metrics["decomposition"] == pytest.approx(probes.decomposition_probes(vectors["train"], vectors["test"]))
    assert metrics["decomposition"] != pytest.approx(probes.decomposition_probes(vectors["test"], vectors["test"]))


# ----------------------------------------------------------------------------- comparable losses

def test_history_records_the_training_objective_beside_every_splits_fused_nll(tmp_path):
    run(tmp_path, "history", "--epochs=1")
    history = pd.read_csv(tmp_path / "history" / "history.csv")
    assert {"train_loss", "train_nll", "valid_nll", "test_nll"} <= set(history.columns)
    assert not {"valid_loss", "test_loss"} & set(history.columns)
    assert history["train_loss"][0] != history["train_nll"][0]                  # the objective adds auxiliary losses


def test_evaluation_nll_is_unweighted_over_the_labelled_utterances():
    feature_set = tiny_demo()
    for d in feature_set.splits["test"]:
        d.labels = torch.where(torch.arange(len(d)) % 3 == 0, -1, d.labels)     # a third unlabelled
    model = train_MALN.build_model(feature_set, train_MALN.parse_overrides([])).eval()
    batches = make_batches(feature_set.splits["test"], 3)
    weights = torch.tensor([5.0, 1.0, 1.0, 1.0])
    result = train_MALN.evaluate(model, batches, torch.device("cpu"), False, weights)
    picked = []
    with torch.no_grad():
        for _, batch in batches:
            log_probs = model({**batch, "labels": None})["log_probs"]
            labelled = batch["labels"] >= 0
            picked.append(-log_probs[labelled].gather(1, batch["labels"][labelled].unsqueeze(1)))
    assert result["nll"] == pytest.approx(torch.cat(picked).mean().item(), rel=1e-6)


# ----------------------------------------------------------------------------- the test split does not shape the model

def with_a_long_dialogue(feature_set, split, n=300):
    long = Dialogue("long", {m: torch.randn(n, x.size(1)) for m, x in feature_set.splits["train"][0].features.items()},
                    torch.arange(n) % 2, torch.zeros(n, dtype=torch.long))
    feature_set.splits[split] = feature_set.splits[split] + [long]
    return feature_set


def test_a_long_test_dialogue_changes_neither_the_model_nor_its_initialisation():
    config = train_MALN.parse_overrides([])
    feature_sets = tiny_demo(), with_a_long_dialogue(tiny_demo(), "test")
    torch.manual_seed(3)
    plain = train_MALN.build_model(feature_sets[0], config)
    torch.manual_seed(3)
    longer = train_MALN.build_model(feature_sets[1], config)
    assert plain.config.max_positions == longer.config.max_positions == 128
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), longer.state_dict().values()))


def test_a_valid_or_test_dialogue_longer_than_the_position_table_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: with_a_long_dialogue(tiny_demo(), "valid"))
    with pytest.raises(SystemExit, match=r"^error: demo: valid dialogue 'long' has 300 utterances; the model reads at most "
                                         r"127 \(its max_positions=128\), sized from the training split, never from valid "
                                         r"or test; give a larger --max_positions$"):
        train_MALN.main(arguments(tmp_path, "long", "--epochs=1"))
    assert not (tmp_path / "long").exists()
    model = train_MALN.build_model(with_a_long_dialogue(tiny_demo(), "valid"), train_MALN.parse_overrides(["--max_positions=301"]))
    assert model.config.max_positions == 301


# ----------------------------------------------------------------------------- schedule, reseeding, resume

def test_learning_rate_at_follows_the_cosine_and_the_constant_schedule():
    cosine = {"lr_schedule": "cosine", "learning_rate": 1e-3, "epochs": 4}
    assert [train_MALN.learning_rate_at(e, cosine) for e in (1, 2, 3, 4)] == pytest.approx(
        [1e-3, 1e-3 * (1 + math.sqrt(0.5)) / 2, 0.5e-3, 1e-3 * (1 - math.sqrt(0.5)) / 2])
    constant = {**cosine, "lr_schedule": "constant"}
    assert [train_MALN.learning_rate_at(e, constant) for e in (1, 2, 3, 4)] == [1e-3] * 4


def test_reseed_every_epoch_repeats_the_batch_order_and_the_dropout_masks(tmp_path, monkeypatch):
    orders, masks, build_model, make_batches = [], [], train_MALN.build_model, train_MALN.make_batches

    def recorded_batches(dialogues, batch_size, generator=None, bucket=False):
        batches = make_batches(dialogues, batch_size, generator, bucket)
        if generator is not None:
            orders.append([d.dialogue_id for group, _ in batches for d in group])
        return batches

    def hooked_model(*args):
        model = build_model(*args)
        model.classifier[2].register_forward_hook(                              # the classifier's dropout
            lambda module, inputs, output: masks.append((output == 0, inputs[0] != 0)) if module.training else None)
        return model

    monkeypatch.setattr(train_MALN, "make_batches", recorded_batches)
    monkeypatch.setattr(train_MALN, "build_model", hooked_model)
    run(tmp_path, "reseeded", "--epochs=2", "--reseed_every_epoch=True")
    steps = len(masks) // 2
    assert orders[0] == orders[1]
    for (zero_1, nonzero_1), (zero_2, nonzero_2) in zip(masks[:steps], masks[steps:]):
        seen = nonzero_1 & nonzero_2                                            # where the mask shows (ReLU zeros hide it)
        assert seen.float().mean() > 0.2 and torch.equal(zero_1[seen], zero_2[seen])
    orders.clear(), masks.clear()
    run(tmp_path, "not_reseeded", "--epochs=2")
    assert orders[0] != orders[1]


def test_resume_refuses_another_epoch_count_for_a_cosine_schedule_or_fewer_than_finished(tmp_path, monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    train_MALN.main(arguments(tmp_path, "cosine", "--epochs=2"))
    with pytest.raises(SystemExit, match=r"^error: --epochs=3: this run's cosine schedule decays over its 2 epochs and a "
                                         r"resumed run keeps it .*resume without --epochs, or start a new run of 3 epochs$"):
        train_MALN.main([f"--resume={tmp_path / 'cosine'}", "--epochs=3"])
    train_MALN.main(arguments(tmp_path, "constant", "--epochs=2", "--lr_schedule=constant"))
    with pytest.raises(SystemExit, match=r"^error: --epochs=1: the run to resume has finished 2 epochs already$"):
        train_MALN.main([f"--resume={tmp_path / 'constant'}", "--epochs=1"])


@pytest.mark.slow
def test_resume_with_more_epochs_of_a_constant_schedule_equals_the_longer_run(tmp_path, monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    train_MALN.main(arguments(tmp_path, "longer", "--epochs=3", "--lr_schedule=constant"))
    train_MALN.main(arguments(tmp_path, "extended", "--epochs=2", "--lr_schedule=constant"))
    train_MALN.main([f"--resume={tmp_path / 'extended'}", "--epochs=3"])
    history = [pd.read_csv(tmp_path / name / "history.csv").drop(columns="seconds") for name in ("longer", "extended")]
    pd.testing.assert_frame_equal(*history)


def test_best_pt_holds_the_moving_average_at_the_best_epoch_not_at_the_last(tmp_path, monkeypatch):
    scripted, evaluate = iter([30.0, 0, 10.0, 0, 20.0, 0]), train_MALN.evaluate   # valid, test by epoch: best valid at 1
    averages, save_last = [], train_MALN.save_last

    def scripted_evaluate(model, batches, *args, keep_vectors=False, **kwargs):
        result = evaluate(model, batches, *args, keep_vectors=keep_vectors, **kwargs)
        if not keep_vectors:
            result["weighted_f1"] = next(scripted)
        return result

    def recording_save_last(run_dir, model, optimizer, generator, device, config, feature_set, history, best, averaged=None):
        averages.append(copy.deepcopy(averaged.module.state_dict()))
        save_last(run_dir, model, optimizer, generator, device, config, feature_set, history, best, averaged)

    monkeypatch.setattr(train_MALN, "evaluate", scripted_evaluate)
    monkeypatch.setattr(train_MALN, "save_last", recording_save_last)
    run(tmp_path, "average", "--epochs=3", "--average_decay=0.5")
    best = load_checkpoint(tmp_path / "average" / "best.pt")
    assert best["epoch"] == 1 and len(averages) == 3
    assert all(torch.equal(best["model"][k], averages[0][k]) for k in averages[0])
    assert not all(torch.equal(best["model"][k], averages[2][k]) for k in averages[2])


# ----------------------------------------------------------------------------- a NaN loss

def test_a_non_finite_loss_stops_before_that_batchs_step_on_cpu(tmp_path, monkeypatch):
    forward, training_calls, steps = MALN.forward, [], []

    def diverging(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        if self.training:
            training_calls.append(1)
            if len(training_calls) == 2:  # epoch 1, batch 2 of 4
                output["losses"]["total"] = output["losses"]["total"] * float("nan")
        return output

    step = torch.optim.Adam.step
    monkeypatch.setattr(MALN, "forward", diverging)
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *args, **kwargs: (steps.append(1), step(self, *args, **kwargs))[1])
    with pytest.raises(train_MALN.NonFiniteLoss, match=r"epoch 1, batch 2 of 4: the training loss is nan"):
        run(tmp_path, "nan", "--epochs=2", "--batch_size=4", feature_set=tiny_demo())
    assert len(training_calls) == 2 and len(steps) == 1


# ----------------------------------------------------------------------------- --predict, --from_release, --select_on

@pytest.fixture
def without_validation_ids(tmp_path):
    """A DialogueRNN-layout file (no validation ids: the run holds out a seeded share of train), and a run on it."""
    path = tmp_path / "rnn.pkl"
    layouts.dialoguernn_iemocap(str(path), n_dialogues=16)
    tiny = ["--hidden_size=8", "--speaker_size=4", "--discriminator_hidden=4", "--sclm_feedforward=8"]
    train_MALN.main([f"--features={path}", "--dataset=IEMOCAP", "--valid_fraction=0.3", "--split_seed=7", "--epochs=1",
                     *arguments(tmp_path, "run", *tiny)])
    return path, tmp_path / "run" / "best.pt"


def test_predict_takes_the_held_out_dialogues_from_the_checkpoint(without_validation_ids, tmp_path):
    path, checkpoint = without_validation_ids
    train_ids = load_features(str(path), "IEMOCAP", valid_fraction=0.5).splits
    expected = split_validation([d.dialogue_id for split in ("train", "valid") for d in train_ids[split]], 0.3, 7)[1]
    train_MALN.main([f"--predict={checkpoint}", f"--features={path}", "--dataset=IEMOCAP", "--predict_split=valid",
                     f"--predictions={tmp_path / 'valid.csv'}"])
    assert sorted(pd.read_csv(tmp_path / "valid.csv")["dialogue_id"].unique()) == sorted(expected)
    with pytest.raises(SystemExit, match=r"^error: --split_seed=8: .*best.pt was trained with split_seed=7; --predict takes "
                                         r"the splits from the checkpoint$"):
        train_MALN.main([f"--predict={checkpoint}", f"--features={path}", "--dataset=IEMOCAP", "--predict_split=valid",
                         "--split_seed=8", f"--predictions={tmp_path / 'other.csv'}"])


@pytest.mark.slow
def test_select_on_test_trains_on_the_whole_train_split_and_selects_the_best_test_epoch(tmp_path, monkeypatch, capsys):
    feature_set = tiny_demo()
    n_train = len(feature_set.splits["train"]) + len(feature_set.splits["valid"])
    scripted, evaluate = iter([10.0, 30.0, 20.0]), train_MALN.evaluate          # test by epoch: best at 2, not the first

    def scripted_evaluate(model, batches, *args, keep_vectors=False, **kwargs):
        result = evaluate(model, batches, *args, keep_vectors=keep_vectors, **kwargs)
        return result if keep_vectors else {**result, "weighted_f1": next(scripted)}  # only test is evaluated by epoch

    monkeypatch.setattr(train_MALN, "evaluate", scripted_evaluate)
    metrics = run(tmp_path, "release_protocol", "--epochs=3", "--select_on=test", feature_set=feature_set)
    assert metrics["best_epoch"] == metrics["optimistic_best_test_epoch"] == 2
    assert math.isnan(metrics["valid_weighted_f1"])
    assert f"dialogues train/valid/test {n_train}/0/4" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "release_protocol" / "best.pt")["epoch"] == 2


def test_the_released_preset_asks_cudnn_for_deterministic_algorithms(tmp_path, monkeypatch):
    assert train_MALN.parse_overrides(["--preset=released"])["cudnn_deterministic"] is True
    assert train_MALN.parse_overrides([])["cudnn_deterministic"] is False
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    run(tmp_path, "deterministic", "--epochs=1", "--cudnn_deterministic=True")
    assert torch.backends.cudnn.deterministic is True


RELEASE = os.path.join(SHARED_DATA, "release_reference.pt")


@pytest.mark.skipif(not os.path.exists(RELEASE), reason="../shared/data is absent")
def test_from_release_takes_the_attention_heads_from_the_command_line_and_says_so(tmp_path, capsys):
    state = torch.load(RELEASE, weights_only=True)["state_dict"]
    torch.save(state, tmp_path / "release.pt")
    common = [f"--from_release={tmp_path / 'release.pt'}", "--dataset=IEMOCAP", f"--out_dir={tmp_path}"]
    train_MALN.main([*common, "--run_name=two", "--sclm_heads=2", "--cross_heads=2"])
    assert "from the command line: --sclm_heads=2 --cross_heads=2" in capsys.readouterr().out
    converted = MALN.from_checkpoint(str(tmp_path / "two" / "best.pt"))
    assert (converted.config.sclm_heads, converted.config.cross_heads) == (2, 2)
    assert converted.sclm["t"].transformers[0].layers[0].attention.heads == 2 and converted.cross.to_others.heads == 2
    with pytest.raises(SystemExit, match=r"^error: attention over vectors of size 100 cannot have 3 heads"):
        train_MALN.main([*common, "--run_name=three", "--sclm_heads=3"])


# ----------------------------------------------------------------------------- the readers against the real files

IEMOCAP_TEXT = os.path.join(SHARED_DATA, "iemocap_text_minilm.pkl")
MELD_TEXT = os.path.join(SHARED_DATA, "meld_text_minilm_dev.pkl")


def split_counts(feature_set):
    return {split: (len(dialogues), sum(len(d) for d in dialogues)) for split, dialogues in feature_set.splits.items()}


@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/data is absent")
def test_the_readers_give_the_known_counts_of_the_real_files():
    """COSMIC's IEMOCAP split (108 / 12 / 31 dialogues, 5,163 / 647 / 1,623 utterances, as its published
    transcript file has them) and the MELD dev file (934 / 104 / 114 dialogues)."""
    speakers, labels, sentences, train, test, valid = read_pickle(os.path.join(SHARED_DATA, "cosmic_iemocap_transcripts.pkl"))
    published = {split: (len(ids), sum(len(labels[i]) for i in ids)) for split, ids in (("train", train), ("valid", valid),
                                                                                          ("test", test))}
    assert published == {"train": (108, 5163), "valid": (12, 647), "test": (31, 1623)}
    assert split_counts(load_features(IEMOCAP_TEXT, "IEMOCAP")) == published
    assert split_counts(load_features(MELD_TEXT, "MELD")) == {"train": (934, 9036), "valid": (104, 953),
                                                              "test": (114, 1109)}
