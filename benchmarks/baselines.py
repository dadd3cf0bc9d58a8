"""
Linear baselines MALN has to beat with the same features:

- logistic regression on single utterances (each utterance alone, the modalities concatenated);
- logistic regression with speaker context: each utterance's features beside the mean of its
  speaker's utterances in the dialogue and the mean of the whole dialogue;
- logistic regression on single utterances, fitted on train, then a chain along each party's turns
  (chained_logistic_regression_baseline): the party chain of --party_chain=True on a linear model,
  its one parameter (how often a party's emotion stays) chosen on valid;
- on the demo set, its generator's structure with learned parameters (structured_demo_baseline):
  the measured figure a learned model can reach there without knowing the generator's parameters.

    python -m benchmarks.baselines --features=../shared/data/iemocap_text_minilm.pkl --dataset=IEMOCAP
    python -m benchmarks.baselines --features=../shared/data/meld_text_minilm_dev.pkl --dataset=MELD
    python -m benchmarks.baselines --dataset=demo

Fitted on train + valid unless said otherwise (scikit-learn's defaults, features standardised, max_iter 2000), scored on
test: weighted-F1 and each class's F1, in percent. On the demo the Bayes-optimal accuracy (which
knows every generating parameter, offsets included) is printed too.
"""

import sys

import numpy as np
from sklearn.metrics import f1_score

from dataloader import MODALITIES, DataError, load_dataset, load_features, speaker_posteriors
from utils import fit_logistic_regression
from benchmarks.records import RecordError, machine, write_record


def single_utterance(dialogue):
    """(N, sum of D): each utterance's modalities concatenated."""
    return np.concatenate([dialogue.features[m].numpy() for m in sorted(dialogue.features, key=list(MODALITIES).index)], 1)


def with_speaker_context(dialogue):
    """(N, 3 sum of D): [utterance ; mean of its speaker's utterances in the dialogue ; dialogue mean]."""
    features, speakers = single_utterance(dialogue), dialogue.speakers.numpy()
    parties, party = np.unique(speakers, return_inverse=True)
    counts = np.bincount(party, minlength=len(parties))[:, None]                       # (P, 1)
    speaker_means = np.zeros((len(parties), features.shape[1]))
    np.add.at(speaker_means, party, features)                                           # (P, D) sums
    speaker_means /= counts
    return np.concatenate([features, speaker_means[party], np.broadcast_to(features.mean(0), features.shape)], 1)


def fit_demo_structure(dialogues, iterations):
    """The demo generator's parameters from labelled dialogues: class means with each speaker's offset
    removed (alternating estimates), noise and offset variances, the per-speaker transition matrix."""
    features = np.concatenate([single_utterance(d) for d in dialogues])
    labels = np.concatenate([d.labels.numpy() for d in dialogues])
    groups = [np.unique(d.speakers.numpy(), return_inverse=True)[1] for d in dialogues]
    starts = np.cumsum([0] + [g.max() + 1 for g in groups[:-1]])
    speaker = np.concatenate([g + start for g, start in zip(groups, starts)])         # (n,) speaker of the data set
    n_classes, counts = int(labels.max()) + 1, np.bincount(speaker)[:, None]
    means = np.stack([features[labels == k].mean(0) for k in range(n_classes)])      # (K, D)
    for _ in range(iterations):
        offsets = np.zeros((len(counts), features.shape[1]))
        np.add.at(offsets, speaker, features - means[labels])
        offsets /= counts                                                            # (speakers, D)
        means = np.stack([(features - offsets[speaker])[labels == k].mean(0) for k in range(n_classes)])
    noise_variance = ((features - offsets[speaker] - means[labels]) ** 2).mean()
    offset_variance = max((offsets ** 2).mean() - noise_variance * (1 / counts).mean(), 1e-6)
    turns = [d.labels.numpy()[d.speakers.numpy() == p] for d in dialogues for p in np.unique(d.speakers.numpy())]
    switch = np.mean(np.concatenate([t[1:] != t[:-1] for t in turns]))
    transition = np.full((n_classes, n_classes), switch / (n_classes - 1))
    np.fill_diagonal(transition, 1 - switch)
    return means, noise_variance, offset_variance, transition


def infer_with_structure(dialogue, means, noise_variance, offset_variance, transition, iterations):
    """(N, K) emotion posteriors of one dialogue: alternately each speaker's offset (the mean residual
    under the current posteriors, shrunk by its prior) and the posteriors (forward-backward along each
    speaker's utterances)."""
    features, speakers = single_utterance(dialogue), dialogue.speakers.numpy()
    posteriors = np.full((len(features), len(means)), 1 / len(means))
    for _ in range(iterations):
        offsets = np.zeros_like(features)
        for p in np.unique(speakers):
            rows = speakers == p
            shrink = rows.sum() * offset_variance / (rows.sum() * offset_variance + noise_variance)
            offsets[rows] = shrink * (features[rows] - posteriors[rows] @ means).mean(0)
        loglik = -((features[:, None] - offsets[:, None] - means[None]) ** 2).sum(-1) / (2 * noise_variance)  # (N, K)
        posteriors = speaker_posteriors(loglik, speakers, transition)
    return posteriors


def structured_demo_baseline(feature_set, iterations=10):
    """The demo generator's structure with its parameters learned on train + valid, applied to test:
    what a learned model that knows the structure, not the parameters, reaches.
    -> (weighted-F1, {class: F1}) on test."""
    parameters = fit_demo_structure([d for split in ("train", "valid") for d in feature_set.splits[split]], iterations)
    test = feature_set.splits["test"]
    labels = np.concatenate([d.labels.numpy() for d in test])
    predictions = np.concatenate([infer_with_structure(d, *parameters, iterations).argmax(1) for d in test])
    return scored(labels[labels >= 0], predictions[labels >= 0], feature_set.class_names)


def chained_logistic_regression_baseline(feature_set, stays=(0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)):
    """Logistic regression on single utterances, fitted on train, its probabilities (over the class prior)
    smoothed along each party's turns by a chain that keeps a party's emotion with probability `stay`
    (forward-backward, dataloader.speaker_posteriors), `stay` chosen on valid from `stays`: the party
    chain of --party_chain=True on a linear model. -> (weighted-F1, {class: F1}, the chosen stay) on test."""
    check_scorable(feature_set)
    features, labels = utterances(feature_set, ("train",))
    classifier = fit_logistic_regression(features, labels)
    classes = classifier.classes_                                                  # the classes train holds
    prior = np.log(np.bincount(np.searchsorted(classes, labels), minlength=len(classes)))
    emissions = {split: [(classifier.predict_log_proba(single_utterance(d)) - prior, d.speakers.numpy())  # (N, K) each
                         for d in feature_set.splits[split]] for split in ("valid", "test")}

    def scored_with(split, stay):
        transition = np.full((len(classes), len(classes)), (1 - stay) / max(len(classes) - 1, 1))
        np.fill_diagonal(transition, stay)
        labels = np.concatenate([d.labels.numpy() for d in feature_set.splits[split]])
        predicted = np.concatenate([classes[speaker_posteriors(scores, speakers, transition).argmax(1)]
                                    for scores, speakers in emissions[split]])
        return scored(labels[labels >= 0], predicted[labels >= 0], feature_set.class_names)

    stay = max(stays, key=lambda value: scored_with("valid", value)[0])
    return (*scored_with("test", stay), stay)


def utterances(feature_set, splits, describe=single_utterance):
    """Features (n, D') and labels (n,) of the labelled utterances of these splits."""
    dialogues = [d for split in splits for d in feature_set.splits[split]]
    features = np.concatenate([describe(d) for d in dialogues])
    labels = np.concatenate([d.labels.numpy() for d in dialogues])
    return features[labels >= 0], labels[labels >= 0]


def check_scorable(feature_set):
    """A baseline is fitted on the labelled utterances of train + valid, which must hold two classes or more,
    and scored on those of test, which must exist; DataError naming the file otherwise."""
    labels = {split: np.concatenate([d.labels.numpy() for d in feature_set.splits[split]] or [np.zeros(0, int)])
              for split in ("train", "valid", "test")}
    fitted = np.unique(np.concatenate([labels["train"], labels["valid"]]))
    if len(fitted[fitted >= 0]) < 2:
        raise DataError(f"{feature_set.source}: the labelled utterances of train and valid hold "
                        f"{len(fitted[fitted >= 0])} class(es); a classifier needs two or more")
    if not (labels["test"] >= 0).any():
        raise DataError(f"{feature_set.source}: the test split has no labelled utterance, so a baseline has nothing to be scored on")


def logistic_regression_baseline(feature_set, describe=single_utterance):
    """-> (weighted-F1, {class: F1}) on test of logistic regression fitted on train + valid, each
    utterance described by `describe` (single_utterance or with_speaker_context)."""
    check_scorable(feature_set)
    classifier = fit_logistic_regression(*utterances(feature_set, ("train", "valid"), describe))
    features, labels = utterances(feature_set, ("test",), describe)
    return scored(labels, classifier.predict(features), feature_set.class_names)


def scored(labels, predictions, class_names):
    """-> (weighted-F1, {class: F1}) in percent."""
    per_class = f1_score(labels, predictions, average=None, labels=range(len(class_names)), zero_division=0)
    return 100 * f1_score(labels, predictions, average="weighted"), dict(zip(class_names, 100 * per_class))


def main(argv):
    usage = ("usage: python -m benchmarks.baselines --features=FILE [--dataset=IEMOCAP|MELD] [--trust_pickle=True] | "
             "--dataset=demo; [--record=NAME] keeps the table in benchmarks/measured/NAME.json")
    options = dict(argument[2:].split("=", 1) for argument in argv if argument.startswith("--") and "=" in argument)
    demo = options.get("dataset") == "demo" and "features" not in options
    if not (demo or "features" in options) or set(options) - {"features", "dataset", "trust_pickle", "record"} \
            or options.get("trust_pickle", "False") not in ("True", "False"):
        raise SystemExit(usage)
    try:
        feature_set = load_dataset("demo") if demo else \
            load_features(options["features"], options.get("dataset"), trust=options.get("trust_pickle") == "True")
        check_scorable(feature_set)
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    rows = []
    for name, describe in (("single utterances", single_utterance), ("with the speaker's and the dialogue's mean", with_speaker_context)):
        weighted, per_class = logistic_regression_baseline(feature_set, describe)
        rows.append([f"logistic regression, {name}", f"{weighted:.2f}", *(f"{f1:.1f}" for f1 in per_class.values())])
        print(f"{feature_set.source}: logistic regression, {name}: test weighted-F1 {weighted:.2f}")
        print("  per-class F1: " + " | ".join(f"{class_name} {f1:.1f}" for class_name, f1 in per_class.items()))
    if feature_set.splits["valid"]:
        weighted, per_class, stay = chained_logistic_regression_baseline(feature_set)
        rows.append([f"logistic regression, single utterances (fitted on train), then a chain along each party's turns "
                     f"(stay {stay}, chosen on valid)", f"{weighted:.2f}", *(f"{f1:.1f}" for f1 in per_class.values())])
        print(f"{feature_set.source}: logistic regression on train, then a party chain (stay {stay} chosen on valid): "
              f"test weighted-F1 {weighted:.2f}")
    if demo:
        weighted, per_class = structured_demo_baseline(feature_set)
        rows.append(["the generator's structure with learned parameters", f"{weighted:.2f}",
                     *(f"{f1:.1f}" for f1 in per_class.values())])
        print(f"demo: the generator's structure with learned parameters (speaker offsets, per-speaker HMM): "
              f"test weighted-F1 {weighted:.2f}")
        print("  per-class F1: " + " | ".join(f"{class_name} {f1:.1f}" for class_name, f1 in per_class.items()))
    if "oracle_accuracy" in feature_set.info:
        rows.append(["Bayes decision knowing every generating parameter (accuracy)",
                     f"{100 * feature_set.info['oracle_accuracy']:.2f}", *("" for _ in per_class)])
        print(f"Bayes-optimal accuracy with every generating parameter known: {100 * feature_set.info['oracle_accuracy']:.2f}")
    if options.get("record"):
        command = "python -m benchmarks.baselines " + " ".join(f"--{k}={v}" for k, v in options.items() if k != "record")
        try:
            write_record(options["record"], {"command": command, "machine": machine(),
                                             "table": {"columns": ["model", "test wF1", *per_class], "rows": rows}})
        except RecordError as error:
            raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
