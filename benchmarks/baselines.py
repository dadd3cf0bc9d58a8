"""
Linear baselines MALN has to beat with the same features:

- logistic regression on single utterances (each utterance alone, the modalities concatenated);
- logistic regression with speaker context: each utterance's features beside the mean of its
  speaker's utterances in the dialogue and the mean of the whole dialogue. This is what a
  linear model learns when it is given the structure the demo generator builds in (a
  per-speaker offset, a per-dialogue channel): its score on the demo is the measured
  figure a learned model can reach there without knowing the generator's parameters.

    python benchmarks/baselines.py --features=../shared/data/iemocap_text_minilm.pkl --dataset=IEMOCAP
    python benchmarks/baselines.py --features=../shared/data/meld_text_minilm_dev.pkl --dataset=MELD
    python benchmarks/baselines.py --dataset=demo

Fitted on train + valid (scikit-learn's defaults, features standardised, max_iter 2000), scored on
test: weighted-F1 and each class's F1, in percent. On the demo the Bayes-optimal accuracy (which
knows every generating parameter, offsets included) is printed too.
"""

import os
import sys
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataloader import DataError, load_dataset, load_features, speaker_posteriors  # noqa: E402


def single_utterance(dialogue):
    """(N, sum of D): each utterance's modalities concatenated."""
    return np.concatenate([dialogue.features[m].numpy() for m in sorted(dialogue.features, key="tav".index)], 1)


def with_speaker_context(dialogue):
    """(N, 3 sum of D): [utterance ; mean of its speaker's utterances in the dialogue ; dialogue mean]."""
    features, speakers = single_utterance(dialogue), dialogue.speakers.numpy()
    parties, party = np.unique(speakers, return_inverse=True)
    counts = np.bincount(party, minlength=len(parties))[:, None]                       # (P, 1)
    speaker_means = np.zeros((len(parties), features.shape[1]))
    np.add.at(speaker_means, party, features)                                           # (P, D) sums
    speaker_means /= counts
    return np.concatenate([features, speaker_means[party], np.broadcast_to(features.mean(0), features.shape)], 1)


def structured_demo_baseline(feature_set, iterations=10):
    """The demo generator's structure with its parameters learned: on train + valid, the class means
    with each speaker's offset removed (alternating estimates), the noise and offset variances and the
    emotion-switch rate; on test, per dialogue, alternately each speaker's offset (the mean residual,
    shrunk by its prior) and each utterance's emotion posterior (forward-backward along the speaker's
    utterances). What a learned model that knows the structure, not the parameters, reaches.
    -> (weighted-F1, {class: F1}) on test."""
    fit = [d for split in ("train", "valid") for d in feature_set.splits[split]]
    features = [single_utterance(d) for d in fit]
    groups = [np.unique(d.speakers.numpy(), return_inverse=True)[1] for d in fit]
    x, y = np.concatenate(features), np.concatenate([d.labels.numpy() for d in fit])
    group = np.concatenate([g + offset for g, offset in zip(groups, np.cumsum([0] + [g.max() + 1 for g in groups[:-1]]))])
    n_classes, counts = len(feature_set.class_names), np.bincount(group)[:, None]
    means = np.stack([x[y == k].mean(0) for k in range(n_classes)])                  # (K, D)
    for _ in range(iterations):
        offsets = np.zeros((len(counts), x.shape[1]))
        np.add.at(offsets, group, x - means[y])
        offsets /= counts                                                             # (speakers, D)
        means = np.stack([(x - offsets[group])[y == k].mean(0) for k in range(n_classes)])
    noise_variance = ((x - offsets[group] - means[y]) ** 2).mean()
    offset_variance = max((offsets ** 2).mean() - noise_variance * (1 / counts).mean(), 1e-6)
    same_speaker = [(d.labels.numpy()[rows[:-1]], d.labels.numpy()[rows[1:]]) for d in fit
                    for p in np.unique(d.speakers.numpy()) for rows in [np.flatnonzero(d.speakers.numpy() == p)]]
    switch = np.mean(np.concatenate([before != after for before, after in same_speaker]))
    transition = np.full((n_classes, n_classes), switch / (n_classes - 1))
    np.fill_diagonal(transition, 1 - switch)
    labels, predictions = [], []
    for d in feature_set.splits["test"]:
        x, speakers = single_utterance(d), d.speakers.numpy()
        posteriors = np.full((len(x), n_classes), 1 / n_classes)
        for _ in range(iterations):
            offsets = np.zeros_like(x)
            for p in np.unique(speakers):
                rows = speakers == p
                shrink = rows.sum() * offset_variance / (rows.sum() * offset_variance + noise_variance)
                offsets[rows] = shrink * (x[rows] - posteriors[rows] @ means).mean(0)
            loglik = -((x[:, None] - offsets[:, None] - means[None]) ** 2).sum(-1) / (2 * noise_variance)   # (N, K)
            posteriors = speaker_posteriors(loglik, speakers, transition)
        labels.append(d.labels.numpy())
        predictions.append(posteriors.argmax(1))
    labels, predictions = np.concatenate(labels), np.concatenate(predictions)
    labels, predictions = labels[labels >= 0], predictions[labels >= 0]
    per_class = f1_score(labels, predictions, average=None, labels=range(n_classes), zero_division=0)
    return 100 * f1_score(labels, predictions, average="weighted"), dict(zip(feature_set.class_names, 100 * per_class))


def utterances(feature_set, splits, describe=single_utterance):
    """Features (n, D') and labels (n,) of the labelled utterances of these splits."""
    dialogues = [d for split in splits for d in feature_set.splits[split]]
    features = np.concatenate([describe(d) for d in dialogues])
    labels = np.concatenate([d.labels.numpy() for d in dialogues])
    return features[labels >= 0], labels[labels >= 0]


def single_utterance_baseline(feature_set, describe=single_utterance):
    """-> (weighted-F1, {class: F1}) on test of logistic regression fitted on train + valid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        classifier.fit(*utterances(feature_set, ("train", "valid"), describe))
    features, labels = utterances(feature_set, ("test",), describe)
    predictions = classifier.predict(features)
    per_class = f1_score(labels, predictions, average=None, labels=range(len(feature_set.class_names)), zero_division=0)
    return 100 * f1_score(labels, predictions, average="weighted"), dict(zip(feature_set.class_names, 100 * per_class))


def main(argv):
    options = dict(argument[2:].split("=", 1) for argument in argv if argument.startswith("--") and "=" in argument)
    demo = options.get("dataset") == "demo" and "features" not in options
    if not (demo or "features" in options) or set(options) - {"features", "dataset"}:
        raise SystemExit("usage: python benchmarks/baselines.py --features=FILE [--dataset=IEMOCAP|MELD] | --dataset=demo")
    try:
        feature_set = load_dataset("demo") if demo else load_features(options["features"], options.get("dataset"))
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    for name, describe in (("single utterances", single_utterance), ("speaker context", with_speaker_context)):
        weighted, per_class = single_utterance_baseline(feature_set, describe)
        print(f"{feature_set.source}: logistic regression, {name}: test weighted-F1 {weighted:.2f}")
        print("  per-class F1: " + " | ".join(f"{class_name} {f1:.1f}" for class_name, f1 in per_class.items()))
    if demo:
        weighted, per_class = structured_demo_baseline(feature_set)
        print(f"demo: the generator's structure with learned parameters (speaker offsets, per-speaker HMM): "
              f"test weighted-F1 {weighted:.2f}")
        print("  per-class F1: " + " | ".join(f"{class_name} {f1:.1f}" for class_name, f1 in per_class.items()))
    if "oracle_accuracy" in feature_set.info:
        print(f"Bayes-optimal accuracy with every generating parameter known: {100 * feature_set.info['oracle_accuracy']:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
