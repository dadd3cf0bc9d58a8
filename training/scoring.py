"""How a run of train_MALN.py is scored. Each epoch: what its batches add up to (EpochTally: the
fused output's NLL over the labelled utterances, accuracy and weighted-F1, the modality
discriminator's loss terms and accuracies, and for the final evaluation and the exports the
vectors of every real utterance), its row of history.csv and its printed line. At the end:
metrics.json (run_metrics) and the report printed of it."""

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import classification_report, confusion_matrix

from training.probes import baseline_line, decomposition_line, decomposition_probes, logistic_regression_baseline
from utils import scores

GAME_KEYS = ("adversarial_common", "adversarial_specific", "discriminator_common_accuracy", "discriminator_specific_accuracy")
NO_SCORES = {"nll": float("nan"), "accuracy": float("nan"), "weighted_f1": float("nan")}  # a split without dialogues


class EpochTally:
    """Per-batch figures kept as tensors on the device (no sync per batch) and added up by result():
    'nll', 'accuracy', 'weighted_f1' over the labelled utterances, the means of GAME_KEYS over the
    real utterances (when the model has an adversarial loss), the label and prediction of every real
    utterance, and with keep_vectors its vectors (real_utterance_vectors)."""

    def __init__(self, keep_vectors=False):
        self.keep_vectors = keep_vectors
        self.nll, self.n_labelled, self.labels, self.predictions, self.real, self.game, self.vectors = [], [], [], [], [], [], []

    def add(self, batch, output, dialogues=None):
        """One batch (on the device) and the model's output for it; `dialogues` for the vectors."""
        log_probs = output["log_probs"].detach()                                          # (B, N, C)
        batch_nll, batch_labelled = labelled_nll(log_probs, batch["labels"])
        self.nll.append(batch_nll)
        self.n_labelled.append(batch_labelled)
        self.game.append(game_terms(output["losses"], batch["utterance_mask"]))
        self.labels.append(batch["labels"].reshape(-1))                                   # (B*N,)
        self.predictions.append(log_probs.argmax(-1).reshape(-1))                         # (B*N,)
        self.real.append(batch["utterance_mask"].reshape(-1))                             # (B*N,)
        if self.keep_vectors:
            self.vectors.append(real_utterance_vectors(dialogues, batch, output))

    def result(self):
        labels, predictions = torch.cat(self.labels).cpu().numpy(), torch.cat(self.predictions).cpu().numpy()
        labelled, real = labels >= 0, torch.cat(self.real).cpu().numpy()
        result = {"nll": mean_nll(self.nll, self.n_labelled), **scores(labels[labelled], predictions[labelled]),
                  **game_means(self.game), "labels": labels[real], "predictions": predictions[real]}
        if self.keep_vectors:
            result["vectors"] = {k: np.concatenate([v[k] for v in self.vectors]) for k in self.vectors[0]}
        return result


def labelled_nll(log_probs, labels):
    """The fused output's NLL summed over the labelled utterances, unweighted, and their count; tensors, no sync.
    log_probs (B, N, C), labels (B, N) with -1 where unlabelled or padding."""
    targets = labels.reshape(-1)                                                  # (B*N,)
    summed = F.nll_loss(log_probs.float().reshape(-1, log_probs.size(-1)), targets, ignore_index=-1, reduction="sum")
    return summed, (targets >= 0).sum()


def mean_nll(sums, counts):
    """NLL per labelled utterance from labelled_nll's per-batch sums and counts; NaN without a labelled utterance."""
    count = int(torch.stack(counts).sum())
    return float(torch.stack(sums).sum()) / count if count else float("nan")


def game_terms(losses, utterance_mask):
    """The modality discriminator's loss terms and accuracies of one batch, each times the batch's
    real utterances, (5,) with that count last; None when the run has no adversarial loss."""
    if "adversarial_common" not in losses:
        return None
    n_real = utterance_mask.sum().float()
    return torch.stack([*(losses[k].detach().float() * n_real for k in GAME_KEYS), n_real])


def game_means(game):
    """{name: mean over the epoch's real utterances} of GAME_KEYS from game_terms' rows; {} without them."""
    if not game or game[0] is None:
        return {}
    sums = torch.stack(game).sum(0).tolist()                                         # one sync
    return {k: value / sums[-1] for k, value in zip(GAME_KEYS, sums)}


def real_utterance_vectors(dialogues, batch, output):
    mask = batch["utterance_mask"]
    vectors = {"fused": output["fused"][mask].float().cpu().numpy()}
    for m, x in batch["features"].items():                    # the model's inputs, before its standardisation
        vectors[f"input_{m}"] = x[mask].float().cpu().numpy()
    for kind in ("common", "specific"):
        for m, x in output[kind].items():
            vectors[f"{kind}_{m}"] = x[mask].float().cpu().numpy()
    vectors["dialogue_id"] = np.array([d.dialogue_id for d in dialogues for _ in range(len(d))])
    vectors["position"] = np.concatenate([np.arange(len(d)) for d in dialogues])
    vectors["label"] = batch["labels"][mask].cpu().numpy()
    vectors["prediction"] = output["log_probs"].argmax(-1)[mask].cpu().numpy()
    return vectors


def game_row(train, valid, reversal):
    """History columns of the adversarial game: the lambda used and, for train and valid, the
    discriminator's accuracies and loss terms (none when the run has no adversarial loss; NaN for
    valid when there is none, with --select_on=test)."""
    if "adversarial_common" not in train:
        return {}
    return {"gradient_reversal": reversal, **{f"{split}_{k}": result.get(k, float("nan"))
                                              for split, result in (("train", train), ("valid", valid)) for k in GAME_KEYS}}


def game_text(row):
    """The valid discriminator accuracies of a history row, for the epoch's line ('' without them)."""
    if "valid_discriminator_common_accuracy" not in row:
        return ""
    return (f" | discriminator acc common {row['valid_discriminator_common_accuracy']:.2f} "
            f"specific {row['valid_discriminator_specific_accuracy']:.2f}")


def epoch_row(epoch, seconds, train, valid, test, reversal):
    """An epoch's row of history.csv: the objective's mean over the training batches ('train_loss'), the NLL,
    accuracy and weighted-F1 of each split, and the adversarial game's columns (game_row)."""
    row = {"epoch": epoch, "seconds": seconds, "train_loss": train["loss"]}
    for split, result in (("train", train), ("valid", valid), ("test", test)):
        row.update({f"{split}_{k}": result[k] for k in ("nll", "accuracy", "weighted_f1")})
    row.update(game_row(train, valid, reversal))
    return row


def epoch_line(row, improved):
    """The line printed for an epoch's row; ' *' marks an epoch that is the selected one so far."""
    return (f"epoch {row['epoch']:3d} | train objective {row['train_loss']:.3f} | " + " | ".join(
        f"{s} nll {row[f'{s}_nll']:.3f} acc {row[f'{s}_accuracy']:5.2f} wF1 {row[f'{s}_weighted_f1']:5.2f}"
        for s in ("train", "valid", "test")) + game_text(row) + f" | {row['seconds']:.1f}s" + (" *" if improved else ""))


def run_metrics(config, feature_set, model, history, best, final, seconds):
    """metrics.json: the selected epoch's scores, the optimistic best test epoch beside them, the probes
    and the baseline, and the run's settings."""
    optimistic = best_test_epoch(history)
    return {
        "source": feature_set.source, "layout": feature_set.layout, "modalities": feature_set.modalities,
        "class_names": feature_set.class_names, "seed": config["seed"], "best_epoch": best["epoch"],
        "valid_weighted_f1": best["valid_weighted_f1"], "valid_accuracy": best["valid_accuracy"],
        "test_weighted_f1": final["test"]["weighted_f1"], "test_accuracy": final["test"]["accuracy"],
        "optimistic_best_test_epoch": optimistic["epoch"], "optimistic_test_weighted_f1": optimistic["test_weighted_f1"],
        "optimistic_test_accuracy": optimistic["test_accuracy"], "parameters": model.n_parameters(),
        "seconds_per_epoch": float(np.mean([r["seconds"] for r in history])), "seconds": seconds,
        "decomposition": decomposition_probes(final["train"]["vectors"], final["test"]["vectors"]),
        "logistic_regression": logistic_regression_baseline(feature_set),
        "config": config, **feature_set.info,
    }


def best_test_epoch(history):
    """The row of the best test weighted-F1 (the release's optimistic protocol); NaN scores and no
    epoch when the test split has no labels."""
    scored = [row for row in history if math.isfinite(row["test_weighted_f1"])]
    if not scored:
        return {"epoch": None, "test_weighted_f1": float("nan"), "test_accuracy": float("nan")}
    return max(scored, key=lambda row: row["test_weighted_f1"])


def report(names, labels, predictions):
    """Classification report and confusion matrix, with class names, over labelled utterances."""
    labelled = labels >= 0
    if not labelled.any():
        print("no labelled test utterance: no classification report")
        return
    print(classification_report(labels[labelled], predictions[labelled], labels=range(len(names)), target_names=names,
                                digits=4, zero_division=0))
    matrix = confusion_matrix(labels[labelled], predictions[labelled], labels=range(len(names)))
    print("confusion matrix (rows: true, columns: predicted)")
    print(pd.DataFrame(matrix, index=names, columns=names).to_string())


def print_outcome(best, metrics):
    """The selected epoch and its test scores, the optimistic figure, the baseline and the probes."""
    if metrics["config"]["select_on"] == "test":
        selected = (f"[optimistic, the release's protocol: --select_on=test, trained on the whole train split] selected "
                    f"epoch {best['epoch']} on test weighted-F1 {best['test_weighted_f1']:.2f}")
    else:
        selected = f"selected epoch {best['epoch']} on validation weighted-F1 {best['valid_weighted_f1']:.2f}"
    if metrics["optimistic_best_test_epoch"] is None:
        print(f"{selected}; the test split has no labelled utterance, so there are no test scores (null in metrics.json)")
        return
    print(f"{selected}: test weighted-F1 {metrics['test_weighted_f1']:.2f}, accuracy {metrics['test_accuracy']:.2f}")
    print(f"[optimistic, the release's protocol] best test epoch {metrics['optimistic_best_test_epoch']}: "
          f"test weighted-F1 {metrics['optimistic_test_weighted_f1']:.2f}, accuracy {metrics['optimistic_test_accuracy']:.2f}")
    print(baseline_line(metrics["logistic_regression"], metrics["test_weighted_f1"]))
    print(decomposition_line(metrics["decomposition"]))
