import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train_MALN
from conftest import DEMO_SETTINGS, MINILM, ROOT
from dataloader import collate, make_batches, make_demo, to_device
from MALN_model_fix import MALN
from utils import scores


def demo_subset(modalities, n_dialogues=(120, 20, 40)):
    feature_set = make_demo(0, n_dialogues=n_dialogues)
    for dialogues in feature_set.splits.values():
        for d in dialogues:
            d.features = {m: d.features[m] for m in modalities}
    return feature_set


def config(tmp_path, *overrides):
    return train_MALN.parse_overrides([*DEMO_SETTINGS, f"--out_dir={tmp_path}", "--batch_size=16", *overrides])


@pytest.mark.slow
def test_demo_run_learns_and_fusion_beats_a_single_modality(tmp_path):
    fused = train_MALN.run(config(tmp_path, "--epochs=12", "--learning_rate=2e-3", "--lr_schedule=constant", "--run_name=tav"),
                           demo_subset("tav"))
    text = train_MALN.run(config(tmp_path, "--epochs=12", "--learning_rate=2e-3", "--lr_schedule=constant", "--run_name=t",
                                 "--export_features=False"),
                          demo_subset("t"))
    assert fused["test_weighted_f1"] > 60       # chance is 25 on four balanced classes
    assert fused["test_weighted_f1"] > text["test_weighted_f1"] + 10
    run_dir = tmp_path / "tav"
    assert {"best.pt", "metrics.json", "history.csv", "features_train.npz", "features_valid.npz",
            "features_test.npz"} <= set(os.listdir(run_dir))
    exported = np.load(run_dir / "features_test.npz")
    n_test = sum(len(d) for d in demo_subset("t").splits["test"])
    assert exported["fused"].shape == (n_test, 300) and exported["common_a"].shape == (n_test, 100)
    assert 100 * np.mean(exported["prediction"] == exported["label"]) == pytest.approx(fused["test_accuracy"])


def test_checkpoint_rebuilds_the_model_with_identical_predictions(tmp_path, device):
    feature_set = demo_subset("tav", (16, 4, 4))
    train_MALN.run(config(tmp_path, "--epochs=2", "--run_name=ckpt", "--export_features=False", f"--device={device}"), feature_set)
    checkpoint = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    model = MALN(train_MALN.build_model(feature_set, checkpoint["config"]).config)
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    loaded = MALN.from_checkpoint(str(tmp_path / "ckpt" / "best.pt"), device)
    assert not loaded.training and loaded.checkpoint["class_names"] == feature_set.class_names
    batch = to_device(collate(feature_set.splits["test"]), device)
    inputs = {**batch, "labels": None}
    assert torch.equal(model(inputs)["log_probs"], loaded(inputs)["log_probs"])


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics(tmp_path):
    feature_set = demo_subset("tav", (24, 6, 6))
    first, second = (train_MALN.run(config(tmp_path, "--epochs=2", f"--run_name=r{i}", "--export_features=False"), feature_set)
                     for i in range(2))
    assert first["test_weighted_f1"] == second["test_weighted_f1"] and first["valid_weighted_f1"] == second["valid_weighted_f1"]


@pytest.mark.slow
def test_threads_sets_torchs_cpu_thread_count_and_zero_leaves_it(tmp_path, monkeypatch):
    counts = []
    monkeypatch.setattr(torch, "set_num_threads", counts.append)
    feature_set = demo_subset("t", (4, 1, 1))
    for threads in (3, 0):
        train_MALN.run(config(tmp_path, "--epochs=1", f"--threads={threads}", f"--run_name=t{threads}", "--export_features=False"),
                       feature_set)
    assert counts == [3]


def test_unknown_hyperparameter_lists_the_valid_names():
    with pytest.raises(SystemExit, match="(?s)unknown option 'learning_rat'.*learning_rate"):
        train_MALN.parse_overrides(["--learning_rat=1"])
    with pytest.raises(SystemExit, match="--epochs=ten: must be a whole number"):
        train_MALN.parse_overrides(["--epochs=ten"])


@pytest.mark.slow
def test_missing_feature_file_is_one_clear_message(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train_MALN.py"), "--dataset=IEMOCAP", f"--out_dir={tmp_path}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "iemocap_features_roberta.pkl" in result.stderr and "--dataset=demo" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(MINILM), reason="../shared/data is absent")
def test_text_only_run_on_real_iemocap_text(tmp_path):
    metrics = train_MALN.run(config(tmp_path, f"--features={MINILM}", "--dataset=IEMOCAP", "--epochs=6", "--batch_size=8",
                                    "--run_name=real", "--export_features=False"))
    assert metrics["modalities"] == "t"
    assert metrics["test_weighted_f1"] > 15  # six epochs in: well above the majority guess (8.9 on this test set)
    summary = json.load(open(tmp_path / "real" / "metrics.json"))
    assert summary["test_weighted_f1"] == metrics["test_weighted_f1"]


def test_bucketed_batches_hold_every_dialogue_once_with_less_padding():
    dialogues = make_demo(0, n_dialogues=(40, 1, 1)).splits["train"]

    def padding(batches):
        return sum(b["utterance_mask"].numel() - int(b["lengths"].sum()) for _, b in batches)

    bucketed = make_batches(dialogues, 4, torch.Generator().manual_seed(0), bucket=True)
    shuffled = make_batches(dialogues, 4, torch.Generator().manual_seed(0))
    assert sorted(d.dialogue_id for group, _ in bucketed for d in group) == sorted(d.dialogue_id for d in dialogues)
    assert padding(bucketed) < padding(shuffled) / 2


def test_batch_loss_does_not_depend_on_which_dialogues_share_the_batch_order():
    feature_set = demo_subset("tav", (8, 1, 1))
    model = train_MALN.build_model(feature_set, train_MALN.parse_overrides([])).eval()
    ordered = sorted(feature_set.splits["train"], key=len)
    short, middle, long = ordered[0], ordered[4], ordered[-1]
    assert len(short) < len(middle) < len(long)

    def run(group):
        batch = collate(group)
        return model(batch)

    alone = run([short])
    for group in ([short, long], [long, short], [short, middle], [middle, long, short]):
        output = run(group)
        row = group.index(short)
        torch.testing.assert_close(output["log_probs"][row, :len(short)], alone["log_probs"][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(output["fused"][row, :len(short)], alone["fused"][0], rtol=1e-5, atol=1e-5)
    forward, backward = run([short, long]), run([long, short])                 # a short dialogue padded, or not
    for name in forward["losses"]:
        assert torch.allclose(forward["losses"][name], backward["losses"][name], rtol=1e-5, atol=1e-6), name


def test_fused_adam_takes_the_released_adam_step():
    """In float64: the fused kernel orders its float operations differently, which after these three steps
    leaves differences of about 7e-15 in float64, far below the 1e-10 allowed; in float32 they reach about 4e-7,
    too close to any tolerance that would still tell a wrong step apart (measured on this machine)."""
    feature_set = demo_subset("tav", (4, 1, 1))
    for dialogues in feature_set.splits.values():
        for d in dialogues:
            d.features = {m: x.double() for m, x in d.features.items()}
    models = [train_MALN.build_model(feature_set, train_MALN.parse_overrides([])).double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    config = train_MALN.parse_overrides([])
    optimizers = [train_MALN.make_optimizer(models[0], config),
                  torch.optim.Adam(models[1].parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])]
    batch = collate(feature_set.splits["train"])
    for model, optimizer in zip(models, optimizers):
        for _ in range(3):
            torch.manual_seed(0)
            loss = model(batch)["losses"]["total"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for fused, reference in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(fused, reference, rtol=0, atol=1e-10)


def test_weighted_f1_weights_each_class_f1_by_its_support():
    labels = [0] * 6 + [1] * 2 + [2] * 2
    predictions = [0] * 6 + [0, 1] + [2, 2]
    # F1 per class: 12/13 (support 6), 2/3 (support 2), 1 (support 2)
    expected = 100 * (6 * 12 / 13 + 2 * 2 / 3 + 2 * 1) / 10
    assert scores(labels, predictions) == pytest.approx({"accuracy": 90.0, "weighted_f1": expected})


def test_epoch_is_selected_on_validation_not_on_test(tmp_path, monkeypatch):
    feature_set = demo_subset("ta", (12, 4, 4))
    scripted = {"valid": [10.0, 30.0, 20.0], "test": [50.0, 20.0, 40.0]}   # best valid epoch 2, best test epoch 1
    calls = {"valid": 0, "test": 0}
    split_of = {id(d): split for split, dialogues in feature_set.splits.items() for d in dialogues}
    real_evaluate = train_MALN.evaluate

    def scripted_evaluate(model, batches, *args, keep_vectors=False, **kwargs):  # the final evaluation keeps vectors
        result = real_evaluate(model, batches, *args, keep_vectors=keep_vectors, **kwargs)
        split = split_of[id(batches[0][0][0])]
        if not keep_vectors and split in scripted:
            result["weighted_f1"] = scripted[split][calls[split]]
            calls[split] += 1
        return result

    monkeypatch.setattr(train_MALN, "evaluate", scripted_evaluate)
    metrics = train_MALN.run(config(tmp_path, "--epochs=3", "--run_name=select"), feature_set)
    assert calls == {"valid": 3, "test": 3}
    assert metrics["best_epoch"] == 2 and metrics["valid_weighted_f1"] == 30.0
    assert metrics["optimistic_best_test_epoch"] == 1 and metrics["optimistic_test_weighted_f1"] == 50.0
    assert torch.load(tmp_path / "select" / "best.pt", weights_only=True)["epoch"] == 2


def test_moving_average_of_the_weights_is_what_is_selected_and_saved(tmp_path):
    train_MALN.run(config(tmp_path, "--epochs=1", "--average_decay=0.9", "--run_name=average", "--export_features=False"),
                   demo_subset("ta", (24, 4, 4)))
    last = torch.load(tmp_path / "average" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "average" / "best.pt", weights_only=True)["model"]
    average = {k[len("module."):]: v for k, v in last["averaged"].items() if k.startswith("module.")}
    assert int(last["averaged"]["n_averaged"]) == 2                                # one update a step: 24 dialogues, 16 a batch
    assert average.keys() == best.keys() and all(torch.equal(average[k], best[k]) for k in best)
    assert not all(torch.equal(last["model"][k], best[k]) for k in best)           # not the trained weights
