"""
Accuracy tables: run the ablations with train_MALN.py (several seeds each) and gather their
summary.json files into Markdown tables.

    python benchmarks/results.py --suite=demo --seeds=1,2,3 --run        # train what is missing, then tabulate
    python benchmarks/results.py --suite=iemocap_text --seeds=1,2,3 --run --features=../shared/data/iemocap_text_minilm.pkl
    python benchmarks/results.py --suite=demo                              # tabulate what is there
    python benchmarks/results.py --suite=demo --run --rows="full model,without SCLM"   # only these rows
    python benchmarks/results.py --suite=decomposition --seeds=1,2,3 --run           # the linear probes' table

Each row is `train_MALN.py --seeds=... --run_name=results/<suite>/<row>` with the row's
overrides; a row already trained (its summary.json exists) is not trained again. Below the
accuracy table comes the table of the decomposition probes (metrics.json's "decomposition",
see decomposition_probes in train_MALN.py) of every row whose runs have them.
"""

import glob
import json
import os
import subprocess
import sys

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_ROWS = {
    "full model": [],
    "without input standardisation": ["--standardize=False"],
    "without SCLM": ["--sclm_mode=off"],
    "SCLM as released (whole-dialogue Transformers)": ["--sclm_mode=release"],
    "without adversarial loss": ["--adversarial=False"],
    "without orthogonality": ["--orthogonality=False"],
    "without cross-modal attention": ["--cross_attention=False"],
    "cross-modal attention over specific vectors": ["--cross_input=specific"],
}
MODALITY_ROWS = {f"modalities {m}": [f"--modalities={m}"] for m in ("t", "a", "v", "ta", "tv", "av", "tav")}
SUITES = {
    "demo": (["--dataset=demo"], {**MODEL_ROWS, **MODALITY_ROWS}),
    # text only: no adversarial loss or cross-modal attention to remove
    "iemocap_text": (["--dataset=IEMOCAP", "--modalities=t"],
                     {k: v for k, v in MODEL_ROWS.items() if k not in ("without adversarial loss", "without cross-modal attention")}),
    # does the gradient-reversal discriminator make common vectors modality-invariant, and the orthogonality loss
    # make specific vectors differ from common ones?
    "decomposition": (["--dataset=demo"], {k: MODEL_ROWS[k] for k in ("full model", "without adversarial loss",
                                                                      "without orthogonality")}),
}
COLUMNS = {"test_weighted_f1": "test wF1", "test_accuracy": "test acc", "valid_weighted_f1": "valid wF1",
           "optimistic_test_weighted_f1": "best-test-epoch wF1 (optimistic)"}

PROBE_COLUMNS = {"modality_from_common_accuracy": "modality from common", "modality_chance": "modality chance",
                 "modality_from_specific_accuracy": "modality from specific",
                 "emotion_from_common_accuracy": "emotion acc from common",
                 "emotion_from_common_weighted_f1": "emotion wF1 from common",
                 "emotion_from_specific_accuracy": "emotion acc from specific",
                 "emotion_from_specific_weighted_f1": "emotion wF1 from specific",
                 "common_specific_abs_cosine": "common-specific abs cosine"}


def run_dir(out_dir, suite, row):
    return os.path.join(out_dir, "results", suite, row.replace(" ", "_").replace("(", "").replace(")", ""))


def train_missing(suite, seeds, out_dir, extra, only):
    base, rows = SUITES[suite]
    for row, overrides in rows.items():
        if only and row not in only:
            continue
        directory = run_dir(out_dir, suite, row)
        if os.path.exists(os.path.join(directory, "summary.json")):
            continue
        command = [sys.executable, os.path.join(ROOT, "train_MALN.py"), *base, *extra, *overrides, f"--seeds={seeds}",
                   f"--out_dir={out_dir}", f"--run_name={os.path.relpath(directory, out_dir)}", "--export_features=False"]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def table(suite, out_dir):
    """One row per ablation: mean ± std over seeds of each metric."""
    records = []
    for row in SUITES[suite][1]:
        path = os.path.join(run_dir(out_dir, suite, row), "summary.json")
        if not os.path.exists(path):
            continue
        summary = json.load(open(path))
        record = {"setting": row, "seeds": len(summary["seeds"])}
        record.update({name: f"{summary[key]['mean']:.2f} ± {summary[key]['std']:.2f}" for key, name in COLUMNS.items()})
        records.append(record)
    return pd.DataFrame(records)


def decomposition_table(suite, out_dir):
    """One row per setting whose runs hold probe figures: mean ± std over the seeds' metrics.json."""
    records = []
    for row in SUITES[suite][1]:
        directory = run_dir(out_dir, suite, row)
        paths = sorted(glob.glob(os.path.join(directory, "seed*", "metrics.json"))) or \
            glob.glob(os.path.join(directory, "metrics.json"))
        probes = [figures for figures in (json.load(open(path)).get("decomposition") for path in paths) if figures]
        if probes:
            records.append({"setting": row, "seeds": len(probes),
                            **{name: mean_std([p[key] for p in probes]) for key, name in PROBE_COLUMNS.items()}})
    return pd.DataFrame(records)


def mean_std(values):
    """'mean ± std' (n-1) of the values; 'n/a' where undefined (None, one modality)."""
    if any(v is None for v in values):
        return "n/a"
    values = pd.Series(values, dtype=float)
    return f"{values.mean():.2f} ± {values.std():.2f}" if len(values) > 1 else f"{values.mean():.2f}"


def markdown(frame):
    """A pandas table as Markdown (without the optional 'tabulate' package)."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main(argv):
    options = {"suite": "demo", "seeds": "1,2,3", "out_dir": os.path.join(ROOT, "saved_models"), "run": False, "rows": ""}
    extra = []
    for argument in argv:
        name, _, value = argument[2:].partition("=")
        if name in options:
            options[name] = value if name != "run" else value.lower() in ("", "true", "1")
        else:
            extra.append(argument)  # passed on to train_MALN.py, e.g. --features=... --epochs=...
    if options["run"]:
        train_missing(options["suite"], options["seeds"], options["out_dir"], extra,
                      [r for r in options["rows"].split(",") if r])
    frame = table(options["suite"], options["out_dir"])
    print(markdown(frame) if not frame.empty else "no finished runs yet")
    probes = decomposition_table(options["suite"], options["out_dir"])
    if not probes.empty:
        print("\ndecomposition probes (fractions; linear probes fitted on train, scored on test):")
        print(markdown(probes))


if __name__ == "__main__":
    main(sys.argv[1:])
