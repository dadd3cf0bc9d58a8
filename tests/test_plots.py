import json

import numpy as np
import pandas as pd
import pytest

import plots
from training import probes
import train_MALN
from conftest import DEMO_SETTINGS
from dataloader import make_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("learning_curves.png", "adversarial_game.png", "confusion_matrix.png", "tsne_inputs_fused.png", "tsne_common_specific.png")


def tiny_run(directory, name, modalities, *overrides):
    feature_set = make_demo(0, n_dialogues=(16, 4, 4))
    for dialogues in feature_set.splits.values():
        for d in dialogues:
            d.features = {m: d.features[m] for m in modalities}
    config = train_MALN.parse_overrides([*DEMO_SETTINGS, f"--out_dir={directory}", f"--run_name={name}", "--epochs=2", "--batch_size=16",
                                         *overrides])
    train_MALN.run(config, feature_set)
    return directory / name, feature_set


@pytest.fixture(scope="module")
def three_modality_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("runs"), "tav", "tav")


def probe_figures(run_dir):
    return json.load(open(run_dir / "metrics.json"))["decomposition"]


@pytest.mark.slow
def test_plots_writes_every_figure_as_a_png(three_modality_run, capsys):
    run_dir, _ = three_modality_run
    plots.main([str(run_dir)])
    printed = capsys.readouterr().out.split()
    assert printed == [str(run_dir / "figures" / name) for name in FIGURES]
    for name in FIGURES:
        data = (run_dir / "figures" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, name


def test_probe_figures_are_in_metrics_and_lie_in_the_unit_interval(three_modality_run):
    figures = probe_figures(three_modality_run[0])
    assert figures["modality_chance"] == pytest.approx(1 / 3)
    assert len(figures) == 9 and all(0 <= value <= 1 for value in figures.values())


def test_exported_input_features_are_the_raw_inputs(three_modality_run):
    run_dir, feature_set = three_modality_run
    exported = np.load(run_dir / "features_test.npz")
    dialogues = {d.dialogue_id: d for d in feature_set.splits["test"]}
    for m in "tav":
        expected = np.stack([dialogues[i].features[m][p].numpy()
                             for i, p in zip(exported["dialogue_id"], exported["position"])])
        np.testing.assert_array_equal(exported[f"input_{m}"], expected)


def test_one_modality_without_exports_gets_probes_and_the_figures_it_can_have(tmp_path, capsys):
    run_dir, _ = tiny_run(tmp_path, "t", "t", "--export_features=False")
    figures = probe_figures(run_dir)
    assert figures["modality_chance"] is None and figures["modality_from_common_accuracy"] is None
    assert "undefined" in figures["note"]
    assert all(0 <= figures[f"emotion_from_{kind}_{name}"] <= 1 for kind in ("common", "specific")
               for name in ("accuracy", "weighted_f1"))
    assert not list(run_dir.glob("features_*.npz"))
    capsys.readouterr()
    plots.main([str(run_dir)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(run_dir / "figures" / "learning_curves.png")
    assert [line.split(":")[0] for line in lines[1:]] == [f"skipped {name}" for name in FIGURES[1:]]


def test_probes_find_modality_in_specific_vectors_and_emotion_where_it_is():
    rng = np.random.default_rng(0)

    def vectors(n):
        labels = rng.integers(0, 4, n)
        emotion = 3 * np.eye(4, 20)[labels]                                                        # (n, 20) class means
        result = {"label": labels}
        for index, m in enumerate("tav"):
            result[f"common_{m}"] = emotion + rng.normal(size=(n, 20))                             # same for every modality
            result[f"specific_{m}"] = 3 * np.eye(3, 20)[index] + rng.normal(size=(n, 20))          # modality, no emotion
        return result

    figures = probes.decomposition_probes(vectors(600), vectors(300))
    assert figures["modality_from_common_accuracy"] < 0.45 and figures["modality_from_specific_accuracy"] > 0.95
    assert figures["modality_from_common_standardised_accuracy"] < 0.45
    assert figures["emotion_from_common_accuracy"] > 0.9 and figures["emotion_from_specific_accuracy"] < 0.4
    assert figures["common_specific_abs_cosine"] < 0.3


def test_a_directory_that_is_not_a_run_is_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="not a run directory") as error:
        plots.main([str(tmp_path)])
    assert "\n" not in str(error.value)


def test_learning_curves_draw_the_runs_logistic_regression_line_beside_its_weighted_f1():
    history = pd.DataFrame({"epoch": [1, 2], **{f"{s}_{m}": [1.0, 0.5] for s in ("train", "valid", "test")
                                                 for m in ("nll", "weighted_f1")}})
    assert plots.baseline_figure({"logistic_regression": {"test_weighted_f1": 81.59}}) == 81.59
    assert plots.baseline_figure({"logistic_regression": {"test_weighted_f1": None}}) is None and plots.baseline_figure(None) is None
    figure = plots.learning_curves(history, 2, 81.59)
    labels = [line.get_label() for line in figure.axes[1].get_lines()]
    assert "logistic regression, single utterances (test) 81.59" in labels
    assert not any("logistic" in line.get_label() for line in plots.learning_curves(history, 2).axes[1].get_lines())
