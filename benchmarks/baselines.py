"""
Logistic regression on single utterances: the baseline MALN has to beat with the same features.

    python benchmarks/baselines.py --features=../shared/data/iemocap_text_minilm.pkl --dataset=IEMOCAP
    python benchmarks/baselines.py --features=../shared/data/meld_text_minilm_dev.pkl --dataset=MELD

Fitted on train + valid (each utterance alone, the file's modalities concatenated, scikit-learn's
defaults, max_iter 2000), scored on test: weighted-F1 and each class's F1, in percent.
"""

import os
import sys
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataloader import DataError, load_features  # noqa: E402


def utterances(feature_set, splits):
    """Features (n, sum of D) and labels (n,) of the labelled utterances of these splits."""
    dialogues = [d for split in splits for d in feature_set.splits[split]]
    features = np.concatenate([np.concatenate([d.features[m].numpy() for m in feature_set.modalities], 1) for d in dialogues])
    labels = np.concatenate([d.labels.numpy() for d in dialogues])
    return features[labels >= 0], labels[labels >= 0]


def single_utterance_baseline(feature_set):
    """-> (weighted-F1, {class: F1}) on test of logistic regression fitted on train + valid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier = LogisticRegression(max_iter=2000).fit(*utterances(feature_set, ("train", "valid")))
    features, labels = utterances(feature_set, ("test",))
    predictions = classifier.predict(features)
    per_class = f1_score(labels, predictions, average=None, labels=range(len(feature_set.class_names)), zero_division=0)
    return 100 * f1_score(labels, predictions, average="weighted"), dict(zip(feature_set.class_names, 100 * per_class))


def main(argv):
    options = dict(argument[2:].split("=", 1) for argument in argv if argument.startswith("--") and "=" in argument)
    if "features" not in options or set(options) - {"features", "dataset"}:
        raise SystemExit("usage: python benchmarks/baselines.py --features=FILE [--dataset=IEMOCAP|MELD]")
    try:
        feature_set = load_features(options["features"], options.get("dataset"))
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    weighted, per_class = single_utterance_baseline(feature_set)
    print(f"{feature_set.source}: logistic regression on single utterances, test weighted-F1 {weighted:.2f}")
    print("per-class F1: " + " | ".join(f"{name} {f1:.1f}" for name, f1 in per_class.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
