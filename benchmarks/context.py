"""
Where the context is lost: a run's test weighted-F1 broken down by dialogue length, by parties per
dialogue, and by how many utterances back the same speaker last spoke, beside logistic regression
on single utterances of the same inputs (fitted on train) in the same groups.

    python train_MALN.py --preset=demo --run_name=context/full --seed=1
    python -m benchmarks.context saved_models/context/full [more runs ...] [--record=NAME]

A run must have exported its vectors (export_features=True, the default): its features_test.npz
names each test utterance's dialogue, position, label and prediction. The data are rebuilt from
the run's saved settings (the demo set, or the feature file it names).
"""

import json
import os
import sys

import numpy as np

from benchmarks.records import machine, write_record
from maln.cli import parse_options
from train_MALN import HYPERPARAMETERS, training_data
from utils import fit_logistic_regression, scores

GROUPS = {  # name -> (what is grouped, [(label, low, high)] inclusive bounds)
    "dialogue length": ("utterances in the dialogue", [("5-12", 5, 12), ("13-25", 13, 25), ("26+", 26, 10 ** 9)]),
    "parties": ("parties in the dialogue", [("2", 2, 2), ("3-4", 3, 4), ("5+", 5, 10 ** 9)]),
    "same speaker last spoke": ("utterances since the same speaker's previous turn (0: first turn)",
                                [("first turn", 0, 0), ("1-2 back", 1, 2), ("3-5 back", 3, 5), ("6+ back", 6, 10 ** 9)]),
}


def utterance_facts(dialogues):
    """Per utterance of these dialogues, in order: dialogue length, parties, distance to the speaker's previous turn."""
    facts = {name: [] for name in GROUPS}
    for d in dialogues:
        speakers = d.speakers.tolist()
        last = {}
        for i, s in enumerate(speakers):
            facts["dialogue length"].append(len(d))
            facts["parties"].append(len(set(speakers)))
            facts["same speaker last spoke"].append(i - last[s] if s in last else 0)
            last[s] = i
    return {name: np.array(values) for name, values in facts.items()}


def single_utterances(dialogues):
    x = np.concatenate([np.concatenate([d.features[m].numpy() for m in d.features], 1) for d in dialogues])
    y = np.concatenate([d.labels.numpy() for d in dialogues])
    return x, y


def breakdown(run_dir):
    """{group: {bin: (model wF1, logistic regression wF1, utterances)}} of one run's test split."""
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    config = {**HYPERPARAMETERS, **metrics["config"]}
    feature_set = training_data(config)
    exported = np.load(os.path.join(run_dir, "features_test.npz"))
    test = feature_set.splits["test"]
    x_train, y_train = single_utterances(feature_set.splits["train"])
    labelled = y_train >= 0
    linear = fit_logistic_regression(x_train[labelled], y_train[labelled]).predict(single_utterances(test)[0])
    facts = utterance_facts(test)
    order = {(d.dialogue_id, i): row for row, (d, i) in enumerate((d, i) for d in test for i in range(len(d)))}
    rows_of_export = np.array([order[(str(d), int(i))] for d, i in zip(exported["dialogue_id"], exported["position"])])
    linear, facts = linear[rows_of_export], {name: values[rows_of_export] for name, values in facts.items()}  # export's order
    labels, predictions = exported["label"], exported["prediction"]
    keep = labels >= 0
    result = {}
    for group, (_, bins) in GROUPS.items():
        result[group] = {}
        for label, low, high in bins:
            rows = keep & (facts[group] >= low) & (facts[group] <= high)
            result[group][label] = (scores(labels[rows], predictions[rows])["weighted_f1"],
                                    scores(labels[rows], linear[rows])["weighted_f1"], int(rows.sum()))
    return result


def main(argv):
    runs = [a for a in argv if not a.startswith("--")]
    options, _ = parse_options([a for a in argv if a.startswith("--")], {"record": ""}, usage=__doc__)
    if not runs:
        raise SystemExit(f"usage: {__doc__}")
    results = [breakdown(run) for run in runs]
    columns = ["group", "bin", "utterances", "MALN test wF1", "logistic regression test wF1", "difference"]
    rows = []
    for group, (_, bins) in GROUPS.items():
        for label, _, _ in bins:
            model = [r[group][label][0] for r in results]
            linear = [r[group][label][1] for r in results]
            rows.append([group, label, str(results[0][group][label][2]), f"{np.mean(model):.2f}", f"{np.mean(linear):.2f}",
                         f"{np.mean(model) - np.mean(linear):+.2f}"])
    widths = [max(len(str(c)) for c in column) for column in zip(columns, *rows)]
    for row in [columns, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    if options["record"]:
        write_record(options["record"], {"command": "python -m benchmarks.context " + " ".join(argv), "machine": machine(),
                                         "runs": runs, "table": {"columns": columns, "rows": rows}})


if __name__ == "__main__":
    main(sys.argv[1:])
