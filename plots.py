"""
Figures of one training run, drawn from its directory alone:

    python plots.py saved_models/<run>

writes PNGs to saved_models/<run>/figures/ and prints their paths:

    learning_curves.png       fused NLL and weighted-F1 of train, valid and test by epoch, the selected epoch marked
    adversarial_game.png      the modality discriminator by epoch, train and valid: its accuracy on common vectors
                              (through the gradient reversal) and on specific ones, and its two loss terms, each
                              beside chance (accuracy 1 / modalities; a loss term M ln M, M modalities)
    confusion_matrix.png      the selected epoch's confusion matrix on test, each true class's row normalised
    tsne_inputs_fused.png     t-SNE of test utterances coloured by gold emotion: input features beside fused vectors
    tsne_common_specific.png  t-SNE of every modality's common and specific test vectors in one map, coloured by
                              modality, marker by emotion: where AMDM works, the common vectors of the modalities
                              overlap and the specific ones separate

The last three need features_test.npz (a run with --export_features=False has none): a figure
that cannot be drawn is skipped with one line saying why. Each t-SNE map holds at most
MAX_POINTS points, a seeded sample of the labelled test utterances, so it takes seconds.
"""

import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from dataloader import MODALITIES, SPLITS
from maln.files import OutputError, atomic_write, check_archive_size, check_no_symlink, check_regular_file

MAX_POINTS = 1500       # points in one t-SNE map
MAX_CLASSES = 20        # classes a figure draws one by one (the most frequent); the others are drawn as one group
SEED = 0                # seed of the sample and of t-SNE
MIN_POINTS = 10         # fewer labelled test utterances than this: no t-SNE
MODALITY_NAMES = {"t": "text", "a": "audio", "v": "visual"}
MARKERS = "os^Dv<>pP*Xh"


def load_run(run_dir):
    """What the run directory holds: metrics (dict), history (DataFrame) and test vectors (dict), each None when absent.
    Each file is checked to be a regular file of what train_MALN.py writes; anything else is one line naming it."""
    if not os.path.isdir(run_dir):
        raise SystemExit(f"error: {run_dir} is not a directory")
    paths = {name: os.path.join(run_dir, name) for name in ("metrics.json", "history.csv", "features_test.npz")}
    if not os.path.lexists(paths["metrics.json"]) and not os.path.lexists(paths["history.csv"]):
        seeds = sorted(name for name in os.listdir(run_dir) if name.startswith("seed"))
        if seeds:
            raise SystemExit(f"error: {run_dir} holds several seeds' runs; give one, e.g. {os.path.join(run_dir, seeds[0])}")
        raise SystemExit(f"error: {run_dir} is not a run directory of train_MALN.py (no metrics.json, no history.csv)")
    try:
        for path in paths.values():
            if os.path.lexists(path):
                check_regular_file(path, os.path.basename(path))
        metrics = read_metrics(paths["metrics.json"]) if os.path.lexists(paths["metrics.json"]) else None
        history = read_history(paths["history.csv"]) if os.path.lexists(paths["history.csv"]) else None
        vectors = read_vectors(paths["features_test.npz"], metrics) if os.path.lexists(paths["features_test.npz"]) else None
    except (ValueError, OSError, KeyError) as error:
        raise SystemExit(f"error: {error}") from None
    return {"metrics": metrics, "history": history, "vectors": vectors}


def read_metrics(path):
    """metrics.json: a dict whose best_epoch is an epoch and class_names distinct names."""
    with open(path) as f:
        try:
            metrics = json.load(f)
        except ValueError as error:
            raise ValueError(f"{path}: not JSON ({error})") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: holds a {type(metrics).__name__}, not the dict train_MALN.py writes")
    epoch, names = metrics.get("best_epoch"), metrics.get("class_names")
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1):
        raise ValueError(f"{path}: field 'best_epoch' must be an epoch number >= 1, got {epoch!r}")
    if not (isinstance(names, list) and names and all(isinstance(name, str) for name in names) and len(set(names)) == len(names)):
        raise ValueError(f"{path}: field 'class_names' must be a list of distinct class names, got {str(names)[:60]}")
    return metrics


HISTORY_COLUMNS = ["epoch", *(f"{split}_weighted_f1" for split in SPLITS)]  # and each split's nll (or, older runs, loss)


def read_history(path):
    """history.csv: one row per epoch with the numeric columns HISTORY_COLUMNS and each split's nll (an older
    run's: loss)."""
    history = pd.read_csv(path)
    losses = "nll" if "train_nll" in history.columns else "loss"
    needed = HISTORY_COLUMNS + [f"{split}_{losses}" for split in SPLITS]
    missing = [column for column in needed if column not in history.columns]
    if missing or history.empty:
        raise ValueError(f"{path}: " + (f"has no column {', '.join(missing)}" if missing else "has no epoch"))
    wrong = [column for column in needed if not pd.api.types.is_numeric_dtype(history[column])]
    if wrong:
        raise ValueError(f"{path}: column {wrong[0]} holds values that are not numbers")
    return history


def read_vectors(path, metrics):
    """features_test.npz (its size bounded before loading): 1-d integer label and prediction of one length, each a
    class of metrics.json (label -1 = unlabelled), and 2-d vectors with a row per utterance."""
    check_archive_size(path, "an .npz archive as train_MALN.py writes")
    with np.load(path, allow_pickle=False) as exported:
        vectors = dict(exported)
    n_classes = len(metrics["class_names"]) if metrics else None
    for name, low in (("label", -1), ("prediction", 0)):
        values = vectors.get(name)
        if values is None or values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{path}: '{name}' must be a 1-d array of class indices")
        if len(values) != len(vectors["label"]) or (len(values) and (values.min() < low or (n_classes and values.max() >= n_classes))):
            raise ValueError(f"{path}: '{name}' must hold one class index in [{low}, {n_classes}) per utterance")
    for name, values in vectors.items():
        if (name == "fused" or name.startswith(("common_", "specific_", "input_"))) \
                and (values.ndim != 2 or len(values) != len(vectors["label"]) or not np.issubdtype(values.dtype, np.floating)
                     or not np.isfinite(values).all()):
            raise ValueError(f"{path}: '{name}' must be a 2-d float array of finite values with a row per utterance")
    if "fused" not in vectors:
        raise ValueError(f"{path}: has no 'fused' vectors")
    return vectors


def selected_epoch(run):
    """The epoch the run selected (metrics.json), or for an unfinished run the best validation epoch so far."""
    if run["metrics"] is not None:
        return run["metrics"]["best_epoch"]
    history = run["history"]
    return int(history["epoch"][history["valid_weighted_f1"].idxmax()])


def learning_curves(history, epoch, baseline=None):
    """The fused output's NLL and weighted-F1 of train, valid and test by epoch, a dashed line at the
    selected epoch, and beside the weighted-F1 the test figure of logistic regression on single
    utterances (metrics.json's logistic_regression) when the run has one: what context and speakers
    must beat. Like is plotted with like: the training objective (train_loss: NLL plus the auxiliary
    losses) is no NLL, so it is left out; a history.csv without NLL columns (an older run) shows its losses."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    loss = ("nll", "fused NLL per labelled utterance (train: dropout on)") if "train_nll" in history else \
        ("loss", "loss (train: the objective; valid, test: NLL)")
    for axis, (metric, title) in zip(axes, (loss, ("weighted_f1", "weighted-F1 (%)"))):
        for split in ("train", "valid", "test"):
            axis.plot(history["epoch"], history[f"{split}_{metric}"], marker=".", label=split)
        axis.axvline(epoch, color="grey", linestyle="--", label=f"selected epoch {epoch}")
        if metric == "weighted_f1" and baseline is not None:
            axis.axhline(baseline, color="black", linestyle=":",
                         label=f"logistic regression, single utterances (test) {baseline:.2f}")
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    return figure


def baseline_figure(metrics):
    """metrics.json's logistic-regression test weighted-F1, or None (no metrics.json, or a run without it)."""
    baseline = (metrics or {}).get("logistic_regression")
    value = baseline.get("test_weighted_f1") if isinstance(baseline, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


GAME_LINES = (("common", "-"), ("specific", ":"))  # vector kind, line style


def adversarial_game(history, n_modalities, epoch):
    """The discriminator's accuracies and loss terms (history.csv's *_discriminator_* and
    *_adversarial_* columns) by epoch, for train and valid, with chance marked: where the game
    works, the accuracy on common vectors falls to chance while the one on specific vectors stays high."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    chances = ((axes[0], "discriminator_{}_accuracy", 1 / n_modalities, "accuracy of the modality discriminator"),
               (axes[1], "adversarial_{}", n_modalities * np.log(n_modalities), "adversarial loss terms"))
    for axis, column, chance, title in chances:
        for split, colour in (("train", "C0"), ("valid", "C1")):
            for kind, style in GAME_LINES:
                axis.plot(history["epoch"], history[f"{split}_{column.format(kind)}"], marker=".", color=colour,
                          linestyle=style, label=f"{split}, {kind} vectors")
        axis.axhline(chance, color="black", linewidth=1, label=f"chance ({chance:.2f})")
        axis.axvline(epoch, color="grey", linestyle="--", label=f"selected epoch {epoch}")
        axis.set_xlabel("epoch")
        axis.set_title(title)
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(fontsize="small")
    figure.suptitle("common vectors reach the discriminator through the gradient reversal")
    figure.tight_layout()
    return figure


def game_skipped(run):
    """Why adversarial_game.png cannot be drawn, or '' when it can."""
    if run["history"] is None:
        return "no history.csv"
    if "train_discriminator_common_accuracy" not in run["history"]:
        return "history.csv has no discriminator columns (a run without the adversarial loss, or of an earlier version)"
    if run["metrics"] is None:
        return "no metrics.json (the run has not finished), which names the modalities that set chance"
    modalities = run["metrics"].get("modalities")
    if not (isinstance(modalities, str) and len(modalities) > 1 and set(modalities) <= set(MODALITIES)):
        return f"metrics.json's field 'modalities' is not two or more of 't', 'a', 'v' (got {str(modalities)[:40]!r})"
    columns = [f"{split}_{name}_{kind}{suffix}" for split in ("train", "valid") for kind in ("common", "specific")
               for name, suffix in (("discriminator", "_accuracy"), ("adversarial", ""))]
    if not all(c in run["history"] and pd.api.types.is_numeric_dtype(run["history"][c]) for c in columns):
        return "history.csv's discriminator columns are incomplete or not numbers"
    return ""


def shown_classes(labels, n_classes):
    """Indices of the classes a figure draws one by one: all of them, or the MAX_CLASSES most frequent gold
    classes of the labelled test utterances (a figure of hundreds of classes would be unreadable and its
    confusion matrix grows with their square)."""
    if n_classes <= MAX_CLASSES:
        return list(range(n_classes))
    counts = np.bincount(labels[labels >= 0], minlength=n_classes)
    return sorted(np.argsort(-counts, kind="stable")[:MAX_CLASSES].tolist())


def confusion(vectors, class_names, epoch, shown):
    """Row-normalised confusion matrix (rows: gold class) of the labelled test utterances of the `shown`
    classes; predictions of the other classes, when some are left out, in one last column."""
    n, others = len(shown), len(shown) < len(class_names)
    position = np.full(len(class_names), n)                                                 # a left-out class -> column n
    position[shown] = np.arange(n)
    kept = (vectors["label"] >= 0) & np.isin(vectors["label"], shown)
    counts = np.zeros((n, n + others))
    np.add.at(counts, (position[vectors["label"][kept]], position[vectors["prediction"][kept]]), 1)
    normalised = counts / np.maximum(counts.sum(1, keepdims=True), 1)                      # (n, n [+ 1]), rows sum to 1
    figure, axis = plt.subplots(figsize=(1.2 * (n + others) + 2.5, 1.0 * n + 2))
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n + others):
            axis.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center",
                      color="white" if normalised[i, j] > 0.5 else "black")
    names = [class_names[k] for k in shown]
    axis.set_xticks(range(n + others), names + ["other classes"] * others, rotation=45, ha="right")
    axis.set_yticks(range(n), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("gold")
    axis.set_title(f"test, epoch {epoch}: share of each gold class")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    return figure


def sample(n, cap):
    """Sorted indices of at most `cap` of n rows, a seeded choice."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(SEED).choice(n, cap, replace=False))


def embed(x):
    """2-d t-SNE of the rows of x, (n, 2)."""
    perplexity = min(30.0, (len(x) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=SEED).fit_transform(x.astype(np.float64))


def class_colour(k):
    return plt.get_cmap("tab10" if k < 10 else "tab20")(k % 20)


def tsne_inputs_fused(vectors, class_names, modalities, shown):
    """Labelled test utterances, coloured by gold emotion: the input features (every modality's,
    concatenated, each dimension standardised) beside the fused vectors; -> figure, note."""
    labelled = np.flatnonzero(vectors["label"] >= 0)
    chosen = labelled[sample(len(labelled), MAX_POINTS)]
    labels = vectors["label"][chosen]
    panels, note = [], ""
    if all(f"input_{m}" in vectors for m in modalities):
        inputs = np.concatenate([vectors[f"input_{m}"][chosen] for m in modalities], axis=1)            # (n, sum D_m)
        inputs = (inputs - inputs.mean(0)) / np.maximum(inputs.std(0), 1e-12)
        panels.append((f"input features ({'+'.join(modalities)}, standardised)", inputs))
    else:
        note = "features_test.npz has no input features (a run of an earlier version): drew the fused vectors only"
    panels.append(("fused vectors (classifier input)", vectors["fused"][chosen]))
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.5), squeeze=False)
    for axis, (title, x) in zip(axes[0], panels):
        points = embed(x)
        rest = ~np.isin(labels, shown)
        if rest.any():
            axis.scatter(points[rest, 0], points[rest, 1], s=8, color="0.7", label="other classes")
        for k in shown:
            mine = labels == k
            axis.scatter(points[mine, 0], points[mine, 1], s=8, color=class_colour(k), label=class_names[k])
        axis.set_title(f"{title}, {len(chosen)} test utterances")
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0][-1].legend(markerscale=2, fontsize="small")
    figure.suptitle("t-SNE, coloured by gold emotion")
    figure.tight_layout()
    return figure, note


def tsne_common_specific(vectors, class_names, modalities, shown):
    """One t-SNE map of every modality's common and specific vectors of the same labelled test
    utterances, shown twice: common vectors highlighted on the left, specific on the right;
    colour: modality, marker: gold emotion."""
    labelled = np.flatnonzero(vectors["label"] >= 0)
    chosen = labelled[sample(len(labelled), max(MIN_POINTS, MAX_POINTS // (2 * len(modalities))))]
    labels = vectors["label"][chosen]
    groups = [(kind, m) for kind in ("common", "specific") for m in modalities]
    points = embed(np.concatenate([vectors[f"{kind}_{m}"][chosen] for kind, m in groups]))      # (2*M*n, 2)
    points = dict(zip(groups, np.split(points, len(groups))))
    figure, axes = plt.subplots(1, 2, figsize=(12, 5.5), sharex=True, sharey=True)
    everything = np.concatenate(list(points.values()))
    for axis, kind in zip(axes, ("common", "specific")):
        axis.scatter(everything[:, 0], everything[:, 1], s=4, color="0.88")
        for index, m in enumerate(modalities):
            rest = points[(kind, m)][~np.isin(labels, shown)]
            axis.scatter(rest[:, 0], rest[:, 1], s=10, color=class_colour(index), marker=".")
            for marker, k in enumerate(shown):
                mine = points[(kind, m)][labels == k]
                axis.scatter(mine[:, 0], mine[:, 1], s=10, color=class_colour(index), marker=MARKERS[marker % len(MARKERS)])
        axis.set_title(f"{kind} vectors (the other kind in grey)")
        axis.set_xticks([])
        axis.set_yticks([])
    handles = [Line2D([], [], linestyle="", marker="o", color=class_colour(index), label=MODALITY_NAMES.get(m, m))
               for index, m in enumerate(modalities)]
    handles += [Line2D([], [], linestyle="", marker=MARKERS[marker % len(MARKERS)], color="black", label=class_names[k])
                for marker, k in enumerate(shown)]
    handles += [Line2D([], [], linestyle="", marker=".", color="black", label="other classes")] * (len(shown) < len(class_names))
    axes[1].legend(handles=handles, fontsize="small")
    figure.suptitle(f"t-SNE of common and specific vectors, {len(chosen)} test utterances: "
                    "colour = modality, marker = emotion")
    figure.tight_layout()
    return figure


def draw(run):
    """{file name: figure, or the reason it is skipped}, and notes on figures drawn in part."""
    metrics, history, vectors = run["metrics"], run["history"], run["vectors"]
    drawn, notes = {}, []
    epoch = selected_epoch(run)
    drawn["learning_curves.png"] = learning_curves(history, epoch, baseline_figure(metrics)) if history is not None \
        else "no history.csv"
    drawn["adversarial_game.png"] = game_skipped(run) or adversarial_game(history, len(metrics["modalities"]), epoch)
    later = ("confusion_matrix.png", "tsne_inputs_fused.png", "tsne_common_specific.png")
    if metrics is None:
        return {**drawn, **{name: "no metrics.json (the run has not finished)" for name in later}}, notes
    if vectors is None:
        return {**drawn, **{name: "no features_test.npz (trained with --export_features=False?)" for name in later}}, notes
    class_names = metrics["class_names"]
    modalities = [key[len("common_"):] for key in vectors if key.startswith("common_")]
    shown = shown_classes(vectors["label"], len(class_names))
    if len(shown) < len(class_names):
        notes.append(f"confusion_matrix.png and the t-SNE maps draw the {len(shown)} most frequent of the {len(class_names)} "
                     f"classes one by one; the other {len(class_names) - len(shown)} are one group 'other classes' "
                     f"(in the confusion matrix, a column of predictions; their rows are left out)")
    drawn["confusion_matrix.png"] = confusion(vectors, class_names, epoch, shown)
    if (vectors["label"] >= 0).sum() < MIN_POINTS:
        return {**drawn, **{name: f"fewer than {MIN_POINTS} labelled test utterances" for name in later[1:]}}, notes
    drawn["tsne_inputs_fused.png"], note = tsne_inputs_fused(vectors, class_names, modalities, shown)
    notes += [f"tsne_inputs_fused.png: {note}"] if note else []
    drawn["tsne_common_specific.png"] = tsne_common_specific(vectors, class_names, modalities, shown)
    return drawn, notes


def main(argv):
    if len(argv) != 1 or argv[0].startswith("--"):
        raise SystemExit("usage: python plots.py saved_models/<run>")
    run_dir = argv[0]
    run = load_run(run_dir)
    directory = os.path.join(run_dir, "figures")
    try:
        check_no_symlink(directory, "plots.py")  # before t-SNE's seconds: a place that cannot take the figures stops here
        drawn, notes = draw(run)
        for name, figure in drawn.items():
            if isinstance(figure, str):
                print(f"skipped {name}: {figure}")
                continue
            path = os.path.join(directory, name)
            atomic_write(path, lambda temporary, figure=figure: figure.savefig(temporary, dpi=120, format="png"))
            plt.close(figure)
            print(path)
    except OutputError as error:
        raise SystemExit(f"error: {error}") from None
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main(sys.argv[1:])
