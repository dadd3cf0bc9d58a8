"""How far a trained MALN split each modality into a common and a specific part, and what a
model that reads no context scores: linear probes on the vectors a run exports, and logistic
regression on single utterances. train_MALN.py reports both for every run (metrics.json,
'decomposition' and 'logistic_regression'); benchmarks/results.py tabulates them."""

import math

import numpy as np
import torch

from utils import fit_logistic_regression, scores


def decomposition_probes(train_vectors, test_vectors, max_train=5000, seed=0):
    """How far the run split each modality into a common and a specific part, measured with
    linear probes (logistic regression on standardised vectors, fitted on at most `max_train`
    seeded train vectors, scored on every test vector). Fractions in [0, 1]:
    - modality_from_{common,specific}_accuracy: which modality a vector came from, each
      utterance's c_m (s_m) labelled m. Where AMDM works, common vectors sit near
      modality_chance (1 / number of modalities) and specific ones far above it. None with one
      modality, where it is undefined.
    - modality_from_common_standardised_accuracy: the same probe after each modality's common
      vectors are standardised with that modality's own train mean and std, so that a shift or a
      scale between the modalities cannot tell them apart; what is left is in the vectors' shape.
    - emotion_from_{common,specific}_{accuracy,weighted_f1}: the emotion from the
      concatenation of every modality's common (specific) vectors alone, labelled utterances.
    - common_specific_abs_cosine: mean |cosine| of an utterance's common and specific vector
      of the same modality on test, which the orthogonality loss pushes towards 0."""
    modalities = [key[len("common_"):] for key in train_vectors if key.startswith("common_")]
    result = {"modality_chance": None, "modality_from_common_accuracy": None, "modality_from_specific_accuracy": None,
              "modality_from_common_standardised_accuracy": None}
    if len(modalities) > 1:
        result["modality_chance"] = 1 / len(modalities)
        for kind in ("common", "specific"):
            train_x, train_y = stack_by_modality(train_vectors, kind, modalities)
            test_x, test_y = stack_by_modality(test_vectors, kind, modalities)
            fitted = linear_probe(train_x, train_y, test_x, test_y, max_train, seed)
            result[f"modality_from_{kind}_accuracy"] = fitted and fitted["accuracy"]
        standardised = [standardised_by_modality(train_vectors, test_vectors, m) for m in modalities]
        train_x, test_x = (np.concatenate([pair[i] for pair in standardised]) for i in (0, 1))
        fitted = linear_probe(train_x, stack_by_modality(train_vectors, "common", modalities)[1], test_x,
                              stack_by_modality(test_vectors, "common", modalities)[1], max_train, seed)
        result["modality_from_common_standardised_accuracy"] = fitted and fitted["accuracy"]
    else:
        result["note"] = "one modality: modality identification is undefined"
    train_labelled, test_labelled = train_vectors["label"] >= 0, test_vectors["label"] >= 0
    for kind in ("common", "specific"):
        train_x = np.concatenate([train_vectors[f"{kind}_{m}"] for m in modalities], axis=1)[train_labelled]  # (n, M*H)
        test_x = np.concatenate([test_vectors[f"{kind}_{m}"] for m in modalities], axis=1)[test_labelled]
        fitted = linear_probe(train_x, train_vectors["label"][train_labelled], test_x, test_vectors["label"][test_labelled],
                              max_train, seed)
        for name in ("accuracy", "weighted_f1"):
            result[f"emotion_from_{kind}_{name}"] = fitted and fitted[name]
    cosines = [np.abs(cosine(test_vectors[f"common_{m}"], test_vectors[f"specific_{m}"])) for m in modalities]
    result["common_specific_abs_cosine"] = float(np.mean(np.concatenate(cosines)))
    return result


def standardised_by_modality(train_vectors, test_vectors, m):
    """Modality m's train and test common vectors, each standardised with m's own train mean and std."""
    train, test = train_vectors[f"common_{m}"], test_vectors[f"common_{m}"]
    mean, std = train.mean(0), np.maximum(train.std(0), 1e-12)
    return (train - mean) / std, (test - mean) / std


def stack_by_modality(vectors, kind, modalities):
    """Every modality's `kind` vectors one under the other, (n*M, H), and the modality index of each row, (n*M,)."""
    stacked = np.concatenate([vectors[f"{kind}_{m}"] for m in modalities])
    return stacked, np.repeat(np.arange(len(modalities)), len(vectors[f"{kind}_{modalities[0]}"]))


def linear_probe(train_x, train_y, test_x, test_y, max_train, seed):
    """Accuracy and weighted-F1 (fractions) on test of a logistic regression fitted on at most
    max_train seeded training rows; None when train holds fewer than two classes or test is empty."""
    if len(np.unique(train_y)) < 2 or len(test_y) == 0:
        return None
    if len(train_y) > max_train:
        chosen = np.sort(np.random.default_rng(seed).choice(len(train_y), max_train, replace=False))
        train_x, train_y = train_x[chosen], train_y[chosen]
    probe = fit_logistic_regression(train_x, train_y, max_iterations=300)
    return {name: value / 100 for name, value in scores(test_y, probe.predict(test_x)).items()}


def cosine(a, b):
    """Row-wise cosine similarity of two (n, H) arrays, (n,)."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(norms, 1e-12)


def logistic_regression_baseline(feature_set, max_iterations=2000):
    """What context and speakers have to beat: logistic regression on single utterances of the
    run's inputs (each utterance's modalities concatenated, standardised), fitted on the labelled
    train utterances, scored on test. -> {'test_weighted_f1', 'test_accuracy'} in percent (NaN
    when test has no label); None when train has fewer than two classes."""
    def utterances(split):
        dialogues = feature_set.splits[split]
        x = np.concatenate([torch.cat([d.features[m] for m in feature_set.modalities], 1).numpy() for d in dialogues])
        y = np.concatenate([d.labels.numpy() for d in dialogues])
        return x[y >= 0], y[y >= 0]

    train_x, train_y = utterances("train")
    if len(np.unique(train_y)) < 2:
        return None
    classifier = fit_logistic_regression(train_x, train_y, max_iterations)
    test_x, test_y = utterances("test")
    figures = scores(test_y, classifier.predict(test_x)) if len(test_y) else scores([], [])
    return {f"test_{name}": value for name, value in figures.items()}


def baseline_line(baseline, model_weighted_f1):
    """The logistic-regression baseline beside the model's test weighted-F1, in one line."""
    if baseline is None:
        return "logistic regression on single utterances: undefined (train has fewer than two classes)"
    if not math.isfinite(baseline["test_weighted_f1"]):
        return "logistic regression on single utterances: no labelled test utterance to score"
    return (f"logistic regression on single utterances (fitted on train): test weighted-F1 "
            f"{baseline['test_weighted_f1']:.2f}, accuracy {baseline['test_accuracy']:.2f}; the model: "
            f"{model_weighted_f1:.2f} ({model_weighted_f1 - baseline['test_weighted_f1']:+.2f})")


def decomposition_line(decomposition):
    """The probe figures in one line of the run's report."""
    d = decomposition
    if d["modality_chance"] is None:
        modality = "modality identification undefined (one modality)"
    else:
        modality = (f"modality from common {d['modality_from_common_accuracy']:.2f} (chance {d['modality_chance']:.2f}; "
                    f"each modality standardised {d['modality_from_common_standardised_accuracy']:.2f}), "
                    f"from specific {d['modality_from_specific_accuracy']:.2f}")
    emotion = "; ".join(f"emotion from {kind} accuracy {d[f'emotion_from_{kind}_accuracy']:.2f} "
                        f"wF1 {d[f'emotion_from_{kind}_weighted_f1']:.2f}"
                        if d[f"emotion_from_{kind}_accuracy"] is not None else f"emotion from {kind} undefined"
                        for kind in ("common", "specific"))
    return (f"decomposition (linear probes, fitted on train, scored on test): {modality}; {emotion}; "
            f"common-specific |cosine| {d['common_specific_abs_cosine']:.2f}")
