"""
Figures of one training run, drawn from its directory alone:

    python plots.py saved_models/<run>

writes PNGs to saved_models/<run>/figures/ and prints their paths:

    learning_curves.png       fused NLL and weighted-F1 of train, valid and test by epoch, the selected epoch marked
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
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from utils import atomic_write  # noqa: E402

MAX_POINTS = 1500       # points in one t-SNE map
SEED = 0                # seed of the sample and of t-SNE
MIN_POINTS = 10         # fewer labelled test utterances than this: no t-SNE
MODALITY_NAMES = {"t": "text", "a": "audio", "v": "visual"}
MARKERS = "os^Dv<>pP*Xh"


def load_run(run_dir):
    """What the run directory holds: metrics (dict), history (DataFrame) and test vectors (dict), each None when absent."""
    if not os.path.isdir(run_dir):
        raise SystemExit(f"error: {run_dir} is not a directory")
    paths = {name: os.path.join(run_dir, name) for name in ("metrics.json", "history.csv", "features_test.npz")}
    if not os.path.exists(paths["metrics.json"]) and not os.path.exists(paths["history.csv"]):
        seeds = sorted(name for name in os.listdir(run_dir) if name.startswith("seed"))
        if seeds:
            raise SystemExit(f"error: {run_dir} holds several seeds' runs; give one, e.g. {os.path.join(run_dir, seeds[0])}")
        raise SystemExit(f"error: {run_dir} is not a run directory of train_MALN.py (no metrics.json, no history.csv)")
    try:
        metrics = json.load(open(paths["metrics.json"])) if os.path.exists(paths["metrics.json"]) else None
        history = pd.read_csv(paths["history.csv"]) if os.path.exists(paths["history.csv"]) else None
        if os.path.exists(paths["features_test.npz"]):
            with np.load(paths["features_test.npz"]) as exported:
                vectors = dict(exported)
        else:
            vectors = None
    except (ValueError, OSError, KeyError) as error:
        raise SystemExit(f"error: {run_dir}: a file does not read ({type(error).__name__}: {error})") from None
    return {"metrics": metrics, "history": history, "vectors": vectors}


def selected_epoch(run):
    """The epoch the run selected (metrics.json), or for an unfinished run the best validation epoch so far."""
    if run["metrics"] is not None:
        return run["metrics"]["best_epoch"]
    history = run["history"]
    return int(history["epoch"][history["valid_weighted_f1"].idxmax()])


def learning_curves(history, epoch):
    """The fused output's NLL and weighted-F1 of train, valid and test by epoch, a dashed line at the
    selected epoch. Like is plotted with like: the training objective (train_loss: NLL plus the auxiliary
    losses) is no NLL, so it is left out; a history.csv without NLL columns (an older run) shows its losses."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    loss = ("nll", "fused NLL per labelled utterance (train: dropout on)") if "train_nll" in history else \
        ("loss", "loss (train: the objective; valid, test: NLL)")
    for axis, (metric, title) in zip(axes, (loss, ("weighted_f1", "weighted-F1 (%)"))):
        for split in ("train", "valid", "test"):
            axis.plot(history["epoch"], history[f"{split}_{metric}"], marker=".", label=split)
        axis.axvline(epoch, color="grey", linestyle="--", label=f"selected epoch {epoch}")
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    return figure


def confusion(vectors, class_names, epoch):
    """Row-normalised confusion matrix (rows: gold class) of the labelled test utterances."""
    labelled = vectors["label"] >= 0
    n = len(class_names)
    counts = np.zeros((n, n))
    np.add.at(counts, (vectors["label"][labelled], vectors["prediction"][labelled]), 1)
    normalised = counts / np.maximum(counts.sum(1, keepdims=True), 1)                      # (n, n), rows sum to 1
    figure, axis = plt.subplots(figsize=(1.2 * n + 2.5, 1.0 * n + 2))
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            axis.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center",
                      color="white" if normalised[i, j] > 0.5 else "black")
    axis.set_xticks(range(n), class_names, rotation=45, ha="right")
    axis.set_yticks(range(n), class_names)
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


def tsne_inputs_fused(vectors, class_names, modalities):
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
        for k, name in enumerate(class_names):
            mine = labels == k
            axis.scatter(points[mine, 0], points[mine, 1], s=8, color=class_colour(k), label=name)
        axis.set_title(f"{title}, {len(chosen)} test utterances")
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0][-1].legend(markerscale=2, fontsize="small")
    figure.suptitle("t-SNE, coloured by gold emotion")
    figure.tight_layout()
    return figure, note


def tsne_common_specific(vectors, class_names, modalities):
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
            for k in range(len(class_names)):
                mine = points[(kind, m)][labels == k]
                axis.scatter(mine[:, 0], mine[:, 1], s=10, color=class_colour(index), marker=MARKERS[k % len(MARKERS)])
        axis.set_title(f"{kind} vectors (the other kind in grey)")
        axis.set_xticks([])
        axis.set_yticks([])
    handles = [Line2D([], [], linestyle="", marker="o", color=class_colour(index), label=MODALITY_NAMES.get(m, m))
               for index, m in enumerate(modalities)]
    handles += [Line2D([], [], linestyle="", marker=MARKERS[k % len(MARKERS)], color="black", label=name)
                for k, name in enumerate(class_names)]
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
    drawn["learning_curves.png"] = learning_curves(history, epoch) if history is not None else "no history.csv"
    later = ("confusion_matrix.png", "tsne_inputs_fused.png", "tsne_common_specific.png")
    if metrics is None:
        return {**drawn, **{name: "no metrics.json (the run has not finished)" for name in later}}, notes
    if vectors is None:
        return {**drawn, **{name: "no features_test.npz (trained with --export_features=False?)" for name in later}}, notes
    class_names = metrics["class_names"]
    modalities = [key[len("common_"):] for key in vectors if key.startswith("common_")]
    drawn["confusion_matrix.png"] = confusion(vectors, class_names, epoch)
    if (vectors["label"] >= 0).sum() < MIN_POINTS:
        return {**drawn, **{name: f"fewer than {MIN_POINTS} labelled test utterances" for name in later[1:]}}, notes
    drawn["tsne_inputs_fused.png"], note = tsne_inputs_fused(vectors, class_names, modalities)
    notes += [f"tsne_inputs_fused.png: {note}"] if note else []
    drawn["tsne_common_specific.png"] = tsne_common_specific(vectors, class_names, modalities)
    return drawn, notes


def main(argv):
    if len(argv) != 1 or argv[0].startswith("--"):
        raise SystemExit("usage: python plots.py saved_models/<run>")
    run_dir = argv[0]
    drawn, notes = draw(load_run(run_dir))
    directory = os.path.join(run_dir, "figures")
    for name, figure in drawn.items():
        if isinstance(figure, str):
            print(f"skipped {name}: {figure}")
            continue
        path = os.path.join(directory, name)
        atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
        plt.close(figure)
        print(path)
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main(sys.argv[1:])
