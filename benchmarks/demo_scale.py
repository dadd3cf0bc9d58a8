"""
Is the demo's gap to its learnable ceiling a matter of training data? The demo generator with more
training dialogues (valid and test as many as the built-in demo's: 30 and 60), written as a `maln`
feature file that train_MALN.py reads, and the two references on the same file printed: logistic
regression on single utterances and the generator's structure with learned parameters.

    python -m benchmarks.demo_scale --train_dialogues=2400 --out=/tmp/demo_2400.pkl [--record=NAME]
    python train_MALN.py --preset=demo --features=/tmp/demo_2400.pkl --seed=1

The file is data, made from the generator's seed: it is refused if --out exists.
"""

import os
import pickle
import sys

from dataloader import CLASS_NAMES, make_demo
from benchmarks.baselines import logistic_regression_baseline, structured_demo_baseline
from benchmarks.records import machine, write_record

OPTIONS = {"train_dialogues": 2400, "demo_seed": 0, "out": "", "record": ""}


def as_maln_file(feature_set):
    """The FeatureSet as a dict of the `maln` layout (Features/README.md)."""
    dialogues = [d for split in ("train", "valid", "test") for d in feature_set.splits[split]]
    return {"format": "maln-features", "class_names": list(feature_set.class_names),
            "speakers": {d.dialogue_id: [f"party{int(p)}" for p in d.speakers] for d in dialogues},
            "labels": {d.dialogue_id: [int(y) for y in d.labels] for d in dialogues},
            "features": {m: {d.dialogue_id: d.features[m].numpy() for d in dialogues} for m in dialogues[0].features},
            "splits": {split: [d.dialogue_id for d in feature_set.splits[split]] for split in ("train", "valid", "test")}}


def main(argv):
    options = dict(OPTIONS)
    for argument in argv:
        name, _, value = argument[2:].partition("=")
        if not argument.startswith("--") or name not in options:
            raise SystemExit(f"unknown argument {argument!r}; options: {', '.join('--' + k for k in options)}")
        options[name] = value
    if not str(options["train_dialogues"]).isdigit() or int(options["train_dialogues"]) < 1:
        raise SystemExit(f"--train_dialogues={options['train_dialogues']}: must be a whole number >= 1")
    if not str(options["demo_seed"]).isdigit():
        raise SystemExit(f"--demo_seed={options['demo_seed']}: must be a whole number >= 0")
    if not options["out"] or os.path.exists(options["out"]):
        raise SystemExit(f"--out={options['out']!r}: give a path that does not exist yet (nothing is overwritten)")
    feature_set = make_demo(int(options["demo_seed"]), n_dialogues=(int(options["train_dialogues"]), 30, 60))
    with open(options["out"], "xb") as handle:
        pickle.dump(as_maln_file(feature_set), handle)
    print(f"wrote {options['out']}: the demo generator (seed {options['demo_seed']}), dialogues train/valid/test "
          f"{options['train_dialogues']}/30/60, classes {CLASS_NAMES['demo']}")
    linear = logistic_regression_baseline(feature_set)[0]
    structured = structured_demo_baseline(feature_set)[0]
    print(f"test weighted-F1 on this file: logistic regression on single utterances {linear:.2f}; "
          f"the generator's structure with learned parameters {structured:.2f}; "
          f"Bayes decision knowing every parameter (accuracy) {100 * feature_set.info['oracle_accuracy']:.2f}")
    if options["record"]:  # benchmarks/measured/NAME.json, a table for docs/results.md
        write_record(options["record"], {
            "command": "python -m benchmarks.demo_scale " + " ".join(argv), "machine": machine(),
            "table": {"columns": ["training dialogues", "logistic regression, single utterances: test wF1",
                                  "the generator's structure with learned parameters: test wF1",
                                  "Bayes decision knowing every parameter: test accuracy"],
                      "rows": [[str(options["train_dialogues"]), f"{linear:.2f}", f"{structured:.2f}",
                                f"{100 * feature_set.info['oracle_accuracy']:.2f}"]]}})


if __name__ == "__main__":
    main(sys.argv[1:])
