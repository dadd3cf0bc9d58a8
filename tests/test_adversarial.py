import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import plots
from training import probes
from benchmarks import results
from training import scoring
import train_MALN
from conftest import DEMO_SETTINGS
from dataloader import collate, make_demo
from MALN_model_fix import MALN
from test_model import SIZES, dialogue, forward, model_for


def demo_subset(modalities, n_dialogues):
    feature_set = make_demo(0, n_dialogues=n_dialogues)
    for dialogues in feature_set.splits.values():
        for d in dialogues:
            d.features = {m: d.features[m] for m in modalities}
    return feature_set


def tiny_run(tmp_path, name, *overrides, modalities="tav", n_dialogues=(16, 4, 4)):
    feature_set = demo_subset(modalities, n_dialogues)
    config = train_MALN.parse_overrides([*DEMO_SETTINGS, f"--out_dir={tmp_path}", f"--run_name={name}", "--epochs=2", "--batch_size=8",
                                         "--export_features=False", *overrides])
    return train_MALN.run(config, feature_set), feature_set, tmp_path / name


def test_discriminator_accuracy_is_the_share_of_real_utterances_it_names_the_modality_of():
    model = model_for()
    batch = collate([dialogue(8, 2), dialogue(5, 3)])
    output = forward(model, [dialogue(8, 2), dialogue(5, 3)])
    real = batch["utterance_mask"]
    for kind in ("common", "specific"):
        named = [model.amdm.discriminator(output[kind][m][real]).argmax(-1) == index for index, m in enumerate(SIZES)]
        expected = torch.cat(named).float().mean()                                   # over 3 x 13 real utterances
        assert output["losses"][f"discriminator_{kind}_accuracy"] == pytest.approx(expected.item())


def test_history_holds_the_discriminator_game_for_train_and_valid(tmp_path):
    _, feature_set, run_dir = tiny_run(tmp_path, "game", n_dialogues=(16, 12, 4))   # valid: batches of 8 and 4 dialogues
    history = pd.read_csv(run_dir / "history.csv")
    columns = [f"{split}_{name}" for split in ("train", "valid") for name in scoring.GAME_KEYS]
    assert set(columns) <= set(history.columns)
    assert history[[c for c in columns if "accuracy" in c]].stack().between(0, 1).all()
    last = torch.load(run_dir / "last.pt", weights_only=True)                       # the last epoch's weights
    model = MALN(train_MALN.build_model(feature_set, last["config"]).config)
    model.load_state_dict(last["model"])
    with torch.no_grad():
        whole = forward(model.eval(), feature_set.splits["valid"])["losses"]          # every valid utterance in one batch
    for name in scoring.GAME_KEYS:
        assert history[f"valid_{name}"].iloc[-1] == pytest.approx(whole[name].item(), rel=1e-4), name


def test_a_run_without_the_adversarial_loss_has_no_game_columns_and_plots_says_why(tmp_path, capsys):
    _, _, run_dir = tiny_run(tmp_path, "plain", "--adversarial=False")
    assert not [c for c in pd.read_csv(run_dir / "history.csv").columns if "discriminator" in c or "adversarial" in c]
    plots.main([str(run_dir)])
    assert "skipped adversarial_game.png: history.csv has no discriminator columns" in capsys.readouterr().out


def test_adversarial_game_figure_marks_chance_for_accuracy_and_loss(tmp_path):
    _, _, run_dir = tiny_run(tmp_path, "drawn")
    run = plots.load_run(str(run_dir))
    figure = plots.draw(run)[0]["adversarial_game.png"]
    accuracy, loss = figure.axes
    horizontal = [{round(y, 4) for line in axis.get_lines() for y in set(line.get_ydata()) if len(set(line.get_ydata())) == 1
                   and len(set(line.get_xdata())) > 1} for axis in (accuracy, loss)]
    assert horizontal == [{round(1 / 3, 4)}, {round(3 * math.log(3), 4)}]
    assert len(accuracy.get_lines()) == 4 + 2                                       # train/valid x common/specific, chance, epoch


def test_dann_schedule_warms_the_reversal_up_from_zero_and_constant_keeps_it():
    config = train_MALN.parse_overrides(["--reversal_schedule=dann", "--epochs=10"])
    factors = [train_MALN.reversal_factor_at(epoch, config) for epoch in range(1, 11)]
    assert factors[0] == 0 and all(a < b for a, b in zip(factors, factors[1:]))
    assert factors[5] == pytest.approx(2 / (1 + math.exp(-10 * 0.5)) - 1)
    constant = train_MALN.parse_overrides(["--epochs=10"])
    assert [train_MALN.reversal_factor_at(epoch, constant) for epoch in (1, 10)] == [1.0, 1.0]
    assert train_MALN.parse_overrides(["--preset=released", "--reversal_schedule=dann"])["reversal_schedule"] == "dann"
    assert train_MALN.parse_overrides(["--preset=released"])["reversal_schedule"] == "constant"
    with pytest.raises(SystemExit, match="--reversal_schedule=linear: must be 'constant' or 'dann'"):
        train_MALN.parse_overrides(["--reversal_schedule=linear"])


def test_reversal_factor_scales_the_gradient_the_common_encoders_get():
    model = model_for().train()
    batch = collate([dialogue(8, 2), dialogue(6, 3)])

    def encoder_gradient(factor):
        model.zero_grad()
        torch.manual_seed(1)
        model(batch, reversal_factor=factor)["losses"]["adversarial_common"].backward()
        return model.amdm.shared_common[0].weight.grad.clone()

    full, quarter, none = encoder_gradient(1.0), encoder_gradient(0.25), encoder_gradient(0.0)
    assert torch.allclose(quarter, 0.25 * full, atol=1e-7) and not torch.equal(full, torch.zeros_like(full))
    assert torch.equal(none, torch.zeros_like(none))


def test_history_records_the_scheduled_reversal_of_each_epoch(tmp_path):
    _, _, run_dir = tiny_run(tmp_path, "dann", "--reversal_schedule=dann", "--gradient_reversal=0.5", "--epochs=3")
    recorded = pd.read_csv(run_dir / "history.csv")["gradient_reversal"].tolist()
    config = train_MALN.parse_overrides(["--reversal_schedule=dann", "--epochs=3"])
    assert recorded == pytest.approx([0.5 * train_MALN.reversal_factor_at(epoch, config) for epoch in (1, 2, 3)])
    assert recorded[0] == 0


def test_every_run_reports_logistic_regression_on_single_utterances_fitted_on_train(tmp_path, capsys):
    metrics, feature_set, _ = tiny_run(tmp_path, "baseline", modalities="ta", n_dialogues=(30, 4, 10))

    def utterances(split):
        dialogues = feature_set.splits[split]
        return (np.concatenate([np.concatenate([d.features["t"].numpy(), d.features["a"].numpy()], 1) for d in dialogues]),
                np.concatenate([d.labels.numpy() for d in dialogues]))

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(*utterances("train"))
    test_x, test_y = utterances("test")
    expected = 100 * f1_score(test_y, classifier.predict(test_x), average="weighted")
    assert metrics["logistic_regression"]["test_weighted_f1"] == pytest.approx(expected)
    printed = capsys.readouterr().out
    assert f"logistic regression on single utterances (fitted on train): test weighted-F1 {expected:.2f}" in printed


def test_standardised_probe_cannot_tell_modalities_that_differ_only_by_shift_and_scale():
    rng = np.random.default_rng(0)

    def vectors(n):
        labels = rng.integers(0, 4, n)
        result = {"label": labels}
        for index, m in enumerate("tav"):
            shared = rng.normal(size=(n, 10))
            result[f"common_{m}"] = (1 + index) * shared + 4 * index                        # same shape, shifted and scaled
            result[f"specific_{m}"] = rng.normal(size=(n, 10))
        return result

    figures = probes.decomposition_probes(vectors(600), vectors(300))
    assert figures["modality_from_common_accuracy"] > 0.95
    assert figures["modality_from_common_standardised_accuracy"] < 0.45


def single_modality_accuracy(feature_set, m):
    def utterances(split):
        return (np.concatenate([d.features[m].numpy() for d in feature_set.splits[split]]),
                np.concatenate([d.labels.numpy() for d in feature_set.splits[split]]))
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(*utterances("train"))
    return classifier.score(*utterances("test"))


def test_demo_common_variant_shows_the_whole_emotion_in_every_modality_and_leaves_the_default_alone():
    default, variant = make_demo(0, n_dialogues=(40, 2, 20)), make_demo(0, n_dialogues=(40, 2, 20), common=1.5)
    again = make_demo(0, n_dialogues=(40, 2, 20), common=0.0)
    assert all(torch.equal(a.features[m], b.features[m]) for a, b in zip(default.splits["test"], again.splits["test"]) for m in "tav")
    for m in "tav":  # one modality alone tells two of the four classes apart by construction, with the common part all four
        assert single_modality_accuracy(default, m) < 0.55 and single_modality_accuracy(variant, m) > 0.7, m
    with pytest.raises(SystemExit, match="--demo_common=1.0: must be >= 0 and finite, and given only with the generated demo"):
        train_MALN.parse_overrides(["--features=x.pkl", "--dataset=IEMOCAP", "--demo_common=1.0"])


def test_small_sclm_positions_are_drawn_at_002_and_the_release_keeps_unit_scale():
    small, release = model_for(sclm_positions="small"), model_for()
    assert small.sclm["t"].transformers[0].positions.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert release.sclm["t"].transformers[0].positions.weight.std().item() == pytest.approx(1.0, rel=0.1)
    assert train_MALN.parse_overrides(["--preset=released"])["sclm_positions"] == "release"


def test_sensitivity_figure_plots_each_weights_mean_over_seeds_against_chance(tmp_path):

    for row, weight in results.ADVERSARIAL_WEIGHTS.items():
        for seed in (1, 2):
            directory = tmp_path / "results" / "adversarial" / os.path.basename(results.run_dir("", "adversarial", row)) / f"seed{seed}"
            directory.mkdir(parents=True)
            metrics = {"test_weighted_f1": 70 + seed + weight, "valid_weighted_f1": 60.0,
                       "decomposition": {"modality_from_common_accuracy": 1 - weight / 2 + seed / 100,
                                         "modality_from_specific_accuracy": 1.0, "modality_chance": 1 / 3,
                                         "modality_from_common_standardised_accuracy": 0.4}}
            (directory / "metrics.json").write_text(json.dumps(metrics))
    figure = results.sensitivity_figure("adversarial", str(tmp_path))
    f1_axis, probe_axis = figure.axes
    weights = sorted(results.ADVERSARIAL_WEIGHTS.values())
    test_line, common_line = f1_axis.get_lines()[0], probe_axis.get_lines()[0]
    assert sorted(test_line.get_xdata()) == weights
    assert dict(zip(test_line.get_xdata(), test_line.get_ydata())) == pytest.approx({w: 71.5 + w for w in weights})
    assert dict(zip(common_line.get_xdata(), common_line.get_ydata())) == pytest.approx({w: 1.015 - w / 2 for w in weights})
    assert any(set(line.get_ydata()) == {1 / 3} for line in probe_axis.get_lines())      # chance
    assert any(len(line.get_ydata()) == len(weights) and set(line.get_ydata()) == {0.4}  # standardised per modality
               for line in probe_axis.get_lines())


def test_confusion_objective_trains_the_discriminator_plainly_and_the_encoders_towards_uniform():
    batch = collate([dialogue(8, 2), dialogue(6, 3)])

    def gradients(objective):
        model = model_for(adversarial_objective=objective)                          # eval: the same dropout-free pass
        model.load_state_dict(reference.state_dict())
        torch.manual_seed(1)
        output = model({**batch, "labels": None})
        x = {m: output["common"][m].reshape(-1, 16) for m in SIZES}
        losses = model.amdm.adversarial_losses(output["specific"], output["common"], batch["utterance_mask"])
        losses["adversarial_common"].backward()
        return model, x, batch["utterance_mask"].reshape(-1)

    reference = model_for()
    model, x, real = gradients("confusion")
    plain = model_for()
    plain.load_state_dict(reference.state_dict())
    discriminator_loss = sum(torch.nn.functional.cross_entropy(plain.amdm.discriminator(x[m].detach()),
                                                               torch.where(real, index, -1), ignore_index=-1)
                             for index, m in enumerate(SIZES))
    discriminator_loss.backward()
    for mine, expected in zip(model.amdm.discriminator.parameters(), plain.amdm.discriminator.parameters()):
        assert torch.allclose(mine.grad, expected.grad, atol=1e-6)                   # the discriminator: plain cross-entropy
    confused = model_for()                                                          # the encoders: the confusion term alone
    confused.load_state_dict(reference.state_dict())
    output = confused({**batch, "labels": None})
    by_hand = [-torch.log_softmax(confused.amdm.discriminator(output["common"][m].reshape(-1, 16)), -1).mean(-1)[real].mean()
               for m in SIZES]
    sum(by_hand).backward()
    assert torch.allclose(model.amdm.shared_common[0].weight.grad, confused.amdm.shared_common[0].weight.grad, atol=1e-6)
    assert model.amdm.confusion_loss(x["t"], real).item() == pytest.approx(by_hand[0].item())
    with torch.no_grad():
        model.amdm.discriminator[3].weight.zero_()                                  # a discriminator that cannot tell
        model.amdm.discriminator[3].bias.zero_()
    assert model.amdm.confusion_loss(x["t"], real).item() == pytest.approx(math.log(3))


def test_game_figure_is_skipped_with_a_reason_for_bad_modalities_or_columns():
    history = pd.DataFrame({f"{split}_{name}": [0.5] for split in ("train", "valid") for name in scoring.GAME_KEYS})
    good = {"history": history, "metrics": {"modalities": "tav"}}
    assert plots.game_skipped(good) == ""
    assert "field 'modalities'" in plots.game_skipped({**good, "metrics": {"modalities": ["t", "a"]}})
    assert "not numbers" in plots.game_skipped({**good, "history": history.assign(valid_adversarial_specific=["x"])})


def test_separate_common_last_layers_give_each_modality_its_own_last_layer():
    torch.manual_seed(0)
    shared, separate = model_for(), model_for(common_last_layer="separate")
    assert not hasattr(separate.amdm, "shared_common") and set(separate.amdm.separate_common) == set(SIZES)
    assert separate.n_parameters() - shared.n_parameters() == (len(SIZES) - 1) * (16 * 16 + 16)
    separate.amdm.separate_common["t"][0].weight.data.zero_()   # only the text common vectors change
    dialogues = [dialogue(5, 2), dialogue(3, 3)]
    with torch.no_grad():
        common = forward(separate, dialogues)["common"]
    assert torch.allclose(common["t"], torch.tanh(separate.amdm.separate_common["t"][0].bias).expand_as(common["t"]))
    assert common["a"].std() > 0.01
