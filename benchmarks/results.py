"""
Accuracy tables: run the ablations with train_MALN.py (several seeds each) and gather their
summary.json files into Markdown tables.

    python benchmarks/results.py --suite=demo --seeds=1,2,3 --run        # train what is missing, then tabulate
    python benchmarks/results.py --suite=iemocap_text --seeds=1,2,3 --run --features=../shared/data/iemocap_text_minilm.pkl
    python benchmarks/results.py --suite=demo                              # tabulate what is there
    python benchmarks/results.py --suite=demo --run --rows="full model,without SCLM"   # only these rows

Each row is `train_MALN.py --seeds=... --run_name=results/<suite>/<row>` with the row's
overrides; a row already trained (its summary.json exists) is not trained again.
"""

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
}
COLUMNS = {"test_weighted_f1": "test wF1", "test_accuracy": "test acc", "valid_weighted_f1": "valid wF1",
           "optimistic_test_weighted_f1": "best-test-epoch wF1 (optimistic)"}


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
        if os.path.exists(directory):  # train_MALN.py never overwrites a run's directory
            print(f"skipping {row!r}: {directory} has no summary.json (interrupted?); continue its seeds with "
                  f"train_MALN.py --resume=<its seed directory>, or remove it to train the row again", flush=True)
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


if __name__ == "__main__":
    main(sys.argv[1:])
