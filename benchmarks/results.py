"""
Accuracy tables: run the ablations with train_MALN.py (several seeds each) and gather their
summary.json files into Markdown tables.

    python -m benchmarks.results --suite=demo --seeds=1,2,3 --run        # train what is missing, then tabulate
    python -m benchmarks.results --suite=iemocap_text --seeds=1,2,3 --run --features=../shared/data/iemocap_text_minilm.pkl
    python -m benchmarks.results --suite=demo                              # tabulate what is there
    python -m benchmarks.results --suite=demo --run --rows="full model,without SCLM"   # only these rows
    python -m benchmarks.results --suite=decomposition --seeds=1,2,3 --run           # the linear probes' table
    python -m benchmarks.results --suite=demo --seeds=1,2,3 --run --jobs=2  # two runs at a time, half the cores each

Each (row, seed) is one `train_MALN.py --seed=S --run_name=results/<suite>/<row>/seedS` with the
row's overrides, its output in seedS.log beside that directory; `--jobs=N` runs N of them at a time,
each with --threads=cores/N (torch's threads of several processes would otherwise fight over the
cores). When a row's seeds have all finished, its summary.json is written as `train_MALN.py
--seeds=...` writes it. A row with a summary.json, or a seed with a metrics.json, is not trained
again; a seed interrupted earlier (last.pt but no metrics.json) continues with --resume. A failed
run is named, with the end of its log, and the script exits non-zero after the others finish.
Below the accuracy table comes the table of the decomposition probes (metrics.json's
"decomposition", see decomposition_probes in probes.py) of every row whose runs have them.
"""

import glob
import json
import os
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import pandas as pd

from training import configurator
from training import run_files
import train_MALN
from benchmarks.records import (RecordError, machine, markdown as markdown_table, mean_std, read_record, record_path,
                                update_documents, write_record)
from maln.files import atomic_write, check_regular_file

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
RELEASED_ROWS = {  # the defaults that differ from the release, set back one at a time (plus the two model rows above)
    "dropout 0.66 (released)": ["--dropout=0.66"],
    "released schedule (batch 32; Adam 4e-4 constant; 60 epochs)": ["--batch_size=32", "--learning_rate=4e-4",
                                                                   "--lr_schedule=constant", "--epochs=60"],
    "reseeding every epoch (released)": ["--reseed_every_epoch=True"],
    "every released setting (--preset=released)": ["--preset=released"],
}
TEXT_ROWS = {**{k: v for k, v in MODEL_ROWS.items() if k not in ("without adversarial loss", "without cross-modal attention")},
             "class weights": ["--class_weights=True"], **RELEASED_ROWS}
DEMO_ROWS = {  # longer training and the per-party SCLM, against the demo preset's 15 epochs and per-utterance SCLM
    "30 epochs": ["--epochs=30"],
    "SCLM per party (the paper's; the demo preset before)": ["--sclm_mode=speaker"],
    "SCLM per party + small position table": ["--sclm_mode=speaker", "--sclm_positions=small"],
}
# the IEMOCAP preset these rows were measured with, before the party chain joined config/iemocap.py (docs/settings.md):
# named here, so that a row's figures keep meaning what they meant
EARLIER_IEMOCAP = ["--preset=IEMOCAP", "--party_chain=False"]
IEMOCAP_ROWS = {  # the regularisation switches one at a time, the combinations tried, and the preset chosen from them
                  # (moving average 0.95, input dropout 0.3, class weights)
    "input dropout 0.3": ["--input_dropout=0.3"],
    "moving average of the weights (0.95)": ["--average_decay=0.95"],
    "moving average (0.95) + input dropout 0.3": ["--average_decay=0.95", "--input_dropout=0.3"],
    "moving average (0.95) + input dropout 0.5": ["--average_decay=0.95", "--input_dropout=0.5"],
    "moving average (0.95) + 60 epochs": ["--average_decay=0.95", "--epochs=60"],
    "moving average (0.95) + SCLM as released": ["--average_decay=0.95", "--sclm_mode=release"],
    "IEMOCAP preset (--preset=IEMOCAP)": EARLIER_IEMOCAP,
    "IEMOCAP preset + input dropout 0.5": [*EARLIER_IEMOCAP, "--input_dropout=0.5"],
    "IEMOCAP preset + 45 epochs": [*EARLIER_IEMOCAP, "--epochs=45"],
    "IEMOCAP preset + SCLM as released": [*EARLIER_IEMOCAP, "--sclm_mode=release"],
    "IEMOCAP preset + without SCLM": [*EARLIER_IEMOCAP, "--sclm_mode=off"],
    "IEMOCAP preset + 15 epochs": [*EARLIER_IEMOCAP, "--epochs=15"],
    "IEMOCAP preset + dropout 0.5": [*EARLIER_IEMOCAP, "--dropout=0.5"],
    # the speaker-aware context switches (issue 28), on the preset
    "IEMOCAP preset + party GRU": [*EARLIER_IEMOCAP, "--context_encoder=party_gru"],
    "IEMOCAP preset + party GRU without SCLM": [*EARLIER_IEMOCAP, "--context_encoder=party_gru", "--sclm_mode=off"],
    "IEMOCAP preset + speaker GRU": [*EARLIER_IEMOCAP, "--context_encoder=speaker_gru"],
    "IEMOCAP preset + utterance skip": [*EARLIER_IEMOCAP, "--utterance_skip=True"],
    "IEMOCAP preset + SCLM gates the context vector": [*EARLIER_IEMOCAP, "--sclm_fusion=gate"],
    "IEMOCAP preset + party chain": ["--preset=IEMOCAP", "--party_chain=True"],   # the preset since the context work
    "IEMOCAP preset + party GRU without SCLM + party chain": [*EARLIER_IEMOCAP, "--context_encoder=party_gru",
                                                              "--sclm_mode=off", "--party_chain=True"],
}
MELD_FROZEN_PRESET = "class weights + moving average (0.99) (the MELD preset on frozen vectors)"
MELD_ROWS = {  # each with class weights, the one switch that helped at once
    "class weights + GRU hidden 128": ["--class_weights=True", "--context_hidden=128"],
    "class weights + one GRU layer of 64": ["--class_weights=True", "--context_hidden=64", "--gru_layers=1"],
    "class weights + learning rate 2e-4": ["--class_weights=True", "--learning_rate=2e-4"],
    "class weights + 15 epochs": ["--class_weights=True", "--epochs=15"],
    "class weights + input dropout 0.5": ["--class_weights=True", "--input_dropout=0.5"],
    "class weights + moving average (0.99) + without SCLM": ["--class_weights=True", "--average_decay=0.99", "--sclm_mode=off"],
    "class weights + moving average (0.99) + without the unimodal loss": ["--class_weights=True", "--average_decay=0.99",
                                                                        "--unimodal_weight=0"],
    MELD_FROZEN_PRESET: ["--class_weights=True", "--average_decay=0.99"],
    # the speaker-aware context switches (issue 28), on the preset of fine-tuned vectors (the plain defaults)
    "party GRU": ["--context_encoder=party_gru"],
    "party GRU without SCLM": ["--context_encoder=party_gru", "--sclm_mode=off"],
    "speaker GRU": ["--context_encoder=speaker_gru"],
    "utterance skip": ["--utterance_skip=True"],
    "SCLM gates the context vector": ["--sclm_fusion=gate"],
    "party GRU without SCLM + party chain": ["--context_encoder=party_gru", "--sclm_mode=off", "--party_chain=True"],
    # the preset fits its training dialogues fast (validation peaks at epoch 2): an average of the weights, input dropout
    "party GRU without SCLM + moving average (0.99)": ["--context_encoder=party_gru", "--sclm_mode=off",
                                                       "--average_decay=0.99"],
    "party GRU without SCLM + input dropout 0.3": ["--context_encoder=party_gru", "--sclm_mode=off", "--input_dropout=0.3"],
}
ADVERSARIAL_WEIGHTS = {"adversarial weight 0.01 (released)": 0.01, "adversarial weight 0.03": 0.03,
                       "adversarial weight 0.1": 0.1, "adversarial weight 0.3": 0.3, "adversarial weight 1": 1.0}
ADVERSARIAL_ROWS = {  # does the gradient-reversal game make common vectors modality-invariant, at what weight and cost?
    "without adversarial loss": ["--adversarial=False"],
    **{row: [f"--adversarial_weight={weight}"] for row, weight in ADVERSARIAL_WEIGHTS.items()},
    "gradient reversal 3": ["--gradient_reversal=3"],
    "gradient reversal 10": ["--gradient_reversal=10"],
    "reversal schedule dann": ["--reversal_schedule=dann"],
    "reversal schedule dann + adversarial weight 1": ["--reversal_schedule=dann", "--adversarial_weight=1"],
    # the encoders make the discriminator's prediction uniform instead of maximising its loss
    "confusion objective + adversarial weight 0.1": ["--adversarial_objective=confusion", "--adversarial_weight=0.1"],
    "confusion objective + adversarial weight 1": ["--adversarial_objective=confusion", "--adversarial_weight=1"],
    # candidate causes of a missing invariance, each at the weight where the game is strongest
    "adversarial weight 1 + discriminator hidden 200": ["--adversarial_weight=1", "--discriminator_hidden=200"],
    "adversarial weight 1 + without input standardisation": ["--adversarial_weight=1", "--standardize=False"],
    "adversarial weight 1 + separate common last layers": ["--adversarial_weight=1", "--common_last_layer=separate"],
    "confusion objective + adversarial weight 1 + separate common last layers": [
        "--adversarial_objective=confusion", "--adversarial_weight=1", "--common_last_layer=separate"],
    "confusion objective + adversarial weight 1 + discriminator hidden 200": [
        "--adversarial_objective=confusion", "--adversarial_weight=1", "--discriminator_hidden=200"],
    # the demo variant with a known common part (every modality shows the whole emotion)
    "common-part demo without adversarial loss": ["--demo_common=1", "--adversarial=False"],
    "common-part demo + adversarial weight 0.01": ["--demo_common=1"],
    "common-part demo + adversarial weight 1": ["--demo_common=1", "--adversarial_weight=1"],
    "common-part demo + confusion objective + adversarial weight 1": ["--demo_common=1", "--adversarial_objective=confusion",
                                                                      "--adversarial_weight=1"],
}
CONTEXT_ROWS = {  # where the speakers change: context along each party's turns, and SCLM acting on the context vector
    "full model": [],
    "party GRU (context along each party's own turns)": ["--context_encoder=party_gru"],
    "party GRU without SCLM": ["--context_encoder=party_gru", "--sclm_mode=off"],
    "speaker GRU (each turn's party one-hot into the dialogue GRU)": ["--context_encoder=speaker_gru"],
    "speaker GRU without SCLM": ["--context_encoder=speaker_gru", "--sclm_mode=off"],
    # the demo preset (party GRU without SCLM) with more epochs or less context dropout
    "party GRU without SCLM + 30 epochs": ["--context_encoder=party_gru", "--sclm_mode=off", "--epochs=30"],
    "party GRU without SCLM + context dropout 0.1": ["--context_encoder=party_gru", "--sclm_mode=off", "--context_dropout=0.1"],
    # the context vectors predict the emotion less well than the utterance's own features (docs/results.md, the probes)
    "party mean GRU without SCLM (each turn beside its party's mean)": ["--context_encoder=party_mean_gru", "--sclm_mode=off"],
    "party GRU without SCLM + utterance skip": ["--context_encoder=party_gru", "--sclm_mode=off", "--utterance_skip=True"],
    # the demo has no part the modalities share (dataloader.make_demo): without the decomposition's losses, or a wider
    # context GRU (64 instead of the modality's 16-24 features)
    "party GRU without SCLM or the decomposition's losses": ["--context_encoder=party_gru", "--sclm_mode=off",
                                                           "--adversarial=False", "--orthogonality=False"],
    "party GRU without SCLM + context hidden 32": ["--context_encoder=party_gru", "--sclm_mode=off", "--context_hidden=32"],
    "party GRU without SCLM + context hidden 64": ["--context_encoder=party_gru", "--sclm_mode=off", "--context_hidden=64"],
    "party GRU without SCLM + context hidden 64 + 30 epochs": ["--context_encoder=party_gru", "--sclm_mode=off",
                                                             "--context_hidden=64", "--epochs=30"],
    "party GRU without SCLM + context hidden 64 + context dropout 0.1": ["--context_encoder=party_gru", "--sclm_mode=off",
                                                                          "--context_hidden=64", "--context_dropout=0.1"],
    # the demo's emotion shows in every modality in part (valence, arousal, their product): one party state reads them all
    "party joint GRU without SCLM (the party GRU reads every modality)": ["--context_encoder=party_joint_gru",
                                                                          "--sclm_mode=off"],
    # the labels' own persistence: learned emotion transitions along each party's turns on the classifier's scores
    "party GRU without SCLM + party chain": ["--context_encoder=party_gru", "--sclm_mode=off", "--party_chain=True"],
    "without SCLM + party chain": ["--sclm_mode=off", "--party_chain=True"],
    "party GRU without SCLM + party chain + utterance skip": ["--context_encoder=party_gru", "--sclm_mode=off",
                                                              "--party_chain=True", "--utterance_skip=True"],
    "party GRU without SCLM + party chain + context hidden 32": ["--context_encoder=party_gru", "--sclm_mode=off",
                                                                 "--party_chain=True", "--context_hidden=32"],
    "SCLM gates the context vector": ["--sclm_fusion=gate"],
    "SCLM corrects the context vector": ["--sclm_fusion=correct"],
    "without SCLM": ["--sclm_mode=off"],
}
# the demo preset these suites' records were measured with, before the context work moved config/demo.py to the
# party GRU without SCLM, then the party chain and a context GRU of 32 (docs/settings.md): named here, so that a row's
# figures keep meaning what they meant
EARLIER_DEMO = ["--preset=demo", "--context_encoder=gru", "--sclm_mode=utterance", "--party_chain=False",
                "--context_hidden=0"]
SUITES = {
    "demo": (EARLIER_DEMO, {**MODEL_ROWS, **MODALITY_ROWS, **DEMO_ROWS}),
    # text only: no adversarial loss or cross-modal attention to remove. The rows start from the defaults above the
    # settings (the top of train_MALN.py); the dataset's preset is a row of its own
    "iemocap_text": (["--dataset=IEMOCAP", "--modalities=t"], {**TEXT_ROWS, **IEMOCAP_ROWS}),
    "meld_text": (["--dataset=MELD", "--modalities=t"], {**TEXT_ROWS, **MELD_ROWS}),
    # does the gradient-reversal discriminator make common vectors modality-invariant, and the orthogonality loss
    # make specific vectors differ from common ones?
    "decomposition": (EARLIER_DEMO, {k: MODEL_ROWS[k] for k in ("full model", "without adversarial loss",
                                                                      "without orthogonality")}),
    "adversarial": (EARLIER_DEMO, ADVERSARIAL_ROWS),
    "context": (EARLIER_DEMO, CONTEXT_ROWS),
}
COLUMNS = {"test_weighted_f1": "test wF1", "test_accuracy": "test acc", "valid_weighted_f1": "valid wF1",
           "optimistic_test_weighted_f1": "best-test-epoch wF1 (optimistic)"}

PROBE_COLUMNS = {"modality_from_common_accuracy": "modality from common", "modality_chance": "modality chance",
                 "modality_from_common_standardised_accuracy": "modality from common, each modality standardised",
                 "modality_from_specific_accuracy": "modality from specific",
                 "emotion_from_common_accuracy": "emotion acc from common",
                 "emotion_from_common_weighted_f1": "emotion wF1 from common",
                 "emotion_from_specific_accuracy": "emotion acc from specific",
                 "emotion_from_specific_weighted_f1": "emotion wF1 from specific",
                 "common_specific_abs_cosine": "common-specific abs cosine"}


def run_dir(out_dir, suite, row):
    return os.path.join(out_dir, "results", suite, row.replace(" ", "_").replace("(", "").replace(")", ""))


def available_cores():
    """Cores this process may run on (its affinity where the system says, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def row_arguments(suite, row, out_dir, extra, threads):
    """train_MALN.py arguments that a row's seeds share."""
    base, rows = SUITES[suite]
    return [*base, f"--threads={threads}", *extra, *rows[row], f"--out_dir={out_dir}", "--export_features=False"]


def seed_command(arguments, seed, seed_dir, out_dir, threads):
    """The command line training one seed of a row into seed_dir, or continuing it when interrupted earlier."""
    train = os.path.join(ROOT, "train_MALN.py")
    if os.path.exists(os.path.join(seed_dir, "last.pt")):
        return [sys.executable, train, f"--resume={seed_dir}", f"--threads={threads}"]
    return [sys.executable, train, *arguments, f"--seed={seed}", f"--run_name={os.path.relpath(seed_dir, out_dir)}"]


def train_missing(suite, seeds, out_dir, extra, only, jobs=1):
    """Train every unfinished (row, seed) of the suite, `jobs` at a time, each with cores/jobs
    threads, then write each finished row's summary.json; -> one message per failed run."""
    seed_list = configurator.seed_list_of(seeds)
    if not seed_list:
        raise SystemExit(f"--seeds={seeds}: must be comma-separated integers >= 0, each once, e.g. 1,2,3")
    threads = max(1, available_cores() // jobs)
    rows = {row: row_arguments(suite, row, out_dir, extra, threads) for row in SUITES[suite][1]
            if (not only or row in only) and not os.path.exists(os.path.join(run_dir(out_dir, suite, row), "summary.json"))}
    configs = {row: train_MALN.parse_overrides([*arguments, f"--seeds={seeds}",   # as --seeds=... would run the row;
                                                f"--run_name={os.path.relpath(run_dir(out_dir, suite, row), out_dir)}"])
               for row, arguments in rows.items()}                                 # bad arguments stop here
    runs = []  # (name, command, directory) of every seed without a finished metrics.json
    for row, arguments in rows.items():
        for seed in seed_list:
            seed_dir = os.path.join(run_dir(out_dir, suite, row), f"seed{seed}")
            if finished_seed(seed_dir) is None:
                runs.append((f"{row!r} seed {seed}", seed_command(arguments, seed, seed_dir, out_dir, threads), seed_dir))
    print(f"{len(runs)} run(s) to train, {jobs} at a time with --threads={threads} each ({available_cores()} cores)", flush=True)
    started = time.time()
    failures = run_side_by_side(runs, jobs)
    for row, config in configs.items():
        finished = [finished_seed(os.path.join(run_dir(out_dir, suite, row), f"seed{seed}")) for seed in seed_list]
        if all(metrics is not None for metrics in finished):  # every seed trained and wrote all its outputs
            print(row)
            run_files.write_seed_summary(config, seed_list, finished)
    print(f"whole table: {len(runs)} run(s) in {time.time() - started:.0f} s wall time (--jobs={jobs}, --threads={threads})")
    return failures


def hold_suite_lock(out_dir, suite):
    """One `--run` of a suite in an --out_dir at a time: a second would resume the seeds the first is training."""
    directory = os.path.join(out_dir, "results", suite)
    try:
        os.makedirs(directory, exist_ok=True)
        run_files.hold_run_lock(directory, "--run")
    except OSError as error:  # OutputError: the lock is held, or the folder cannot be written
        raise SystemExit(f"error: {error}".replace("a run that is still going", "another results.py --run")) from None


def finished_seed(seed_dir):
    """The metrics of a seed that finished with all its outputs (run_files.finished_metrics), else None;
    a damaged metrics.json stops with one line naming it."""
    try:
        return run_files.finished_metrics(seed_dir)
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}; remove that seed's directory to train it again") from None


def run_side_by_side(runs, jobs):
    """Run (name, command, directory) subprocesses `jobs` at a time, each writing its output to
    directory.log beside it; -> one message per run that exited non-zero. Ctrl-C starts no new run."""
    def launch(command, directory):
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        print(" ".join(command[1:]), flush=True)
        start = time.time()
        try:  # O_NOFOLLOW: a symbolic link is refused, not appended to wherever it points; O_NONBLOCK: a FIFO never waits
            log = os.open(directory + ".log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as error:
            return f"cannot write its log {directory}.log ({error.strerror}; a symbolic link is never written through)", 0
        if not stat.S_ISREG(os.fstat(log).st_mode):
            os.close(log)
            return f"cannot write its log {directory}.log (not a regular file)", 0
        with os.fdopen(log, "a") as log:
            return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode, time.time() - start

    failures = []
    with ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(launch, command, directory): (name, directory) for name, command, directory in runs}
        try:
            for future in as_completed(futures):
                (name, directory), (status, seconds) = futures[future], future.result()
                if status == 0:
                    print(f"finished {name} in {seconds:.0f} s", flush=True)
                else:
                    failures.append(failure_message(name, directory, status))
                    print(failures[-1], file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            pool.shutdown(cancel_futures=True)
            raise SystemExit("interrupted: finished runs are kept; the same command continues the others") from None
    return failures


def failure_message(name, directory, status, n_lines=5):
    """A failed run's name, exit status and the end of its log (or why it did not start)."""
    if isinstance(status, str):
        return f"failed: {name}: {status}"
    log = directory + ".log"
    tail = []
    if os.path.isfile(log):
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - 2 ** 16))  # the end of the log, however long it grew
            tail = f.read().decode(errors="replace").splitlines()[-n_lines:]
    return f"failed: {name} (exit status {status}); end of {log}:\n    " + "\n    ".join(tail)


def table(suite, out_dir):
    """One row per ablation: mean ± std over seeds of each metric."""
    records = []
    for row in SUITES[suite][1]:
        path = os.path.join(run_dir(out_dir, suite, row), "summary.json")
        if not os.path.exists(path):
            continue
        summary = read_summary(path)
        record = {"setting": row, "seeds": len(summary["seeds"])}
        record.update({name: f"{number(summary[key]['mean'])} ± {number(summary[key]['std'])}" for key, name in COLUMNS.items()})
        records.append(record)
    return pd.DataFrame(records)


def read_json(path):
    """A JSON file's dict; anything else (not a regular file, damaged, not a dict) stops with one line naming it."""
    try:
        check_regular_file(path, "JSON file")
        with open(path) as f:
            data = json.load(f)
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {path}: does not read as JSON ({error}); remove it to train its row again") from None
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path}: holds a {type(data).__name__}, not the dict train_MALN.py writes")
    return data


def read_summary(path):
    """A summary.json with a list of seeds and a number mean and std for each of COLUMNS."""
    summary = read_json(path)
    numbers = all(isinstance(summary.get(key), dict) and all(isinstance(summary[key].get(part), (int, float, type(None)))
                                                            for part in ("mean", "std")) for key in COLUMNS)
    if not (isinstance(summary.get("seeds"), list) and summary["seeds"] and numbers):
        raise SystemExit(f"error: {path}: not a summary of trained seeds (it needs seeds and a mean and std of "
                         f"{', '.join(COLUMNS)}); remove it to train its row again")
    return summary


def number(value):
    """A mean or std of the table; null (a test split without labels, the std of one seed) is n/a."""
    return "n/a" if value is None else f"{value:.2f}"


def decomposition_table(suite, out_dir):
    """One row per setting whose runs hold probe figures: mean ± std over the seeds' metrics.json."""
    records = []
    for row in SUITES[suite][1]:
        directory = run_dir(out_dir, suite, row)
        paths = sorted(glob.glob(os.path.join(directory, "seed*", "metrics.json"))) or \
            glob.glob(os.path.join(directory, "metrics.json"))
        probes = [figures for figures in (read_json(path).get("decomposition") for path in paths) if isinstance(figures, dict)]
        if probes:
            records.append({"setting": row, "seeds": len(probes),
                            **{name: mean_std([p.get(key) for p in probes]) for key, name in PROBE_COLUMNS.items()}})
    return pd.DataFrame(records)


def sensitivity_figure(suite, out_dir):
    """Weighted-F1 (test, valid) and the modality probes (from common, from specific, from common with each
    modality standardised, chance)
    against the adversarial weight, mean ± std over seeds, from the ADVERSARIAL_WEIGHTS rows that
    have finished; 'without adversarial loss' as dashed lines. -> the figure, or None without rows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    points = {}
    for row in ("without adversarial loss", *ADVERSARIAL_WEIGHTS):
        paths = sorted(glob.glob(os.path.join(run_dir(out_dir, suite, row), "seed*", "metrics.json")))
        if paths:
            points[row] = pd.DataFrame([seed_figures(read_json(path)) for path in paths])
    weighted = [row for row in ADVERSARIAL_WEIGHTS if row in points]
    if not weighted:
        return None
    x = [ADVERSARIAL_WEIGHTS[row] for row in weighted]
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    panels = ((axes[0], (("test_weighted_f1", "test"), ("valid_weighted_f1", "valid")), "weighted-F1 (%)"),
              (axes[1], (("modality_from_common_accuracy", "modality from common"),
                         ("modality_from_specific_accuracy", "modality from specific"),
                         ("modality_from_common_standardised_accuracy", "modality from common, each modality standardised")),
               "linear probe accuracy"))
    for axis, columns, title in panels:
        for index, (column, label) in enumerate(columns):
            means = [points[row][column].mean() for row in weighted]
            stds = [points[row][column].std() if len(points[row]) > 1 else 0 for row in weighted]
            axis.errorbar(x, means, yerr=stds, marker="o", capsize=3, color=f"C{index}", label=label)
            if "without adversarial loss" in points:
                axis.axhline(points["without adversarial loss"][column].mean(), color=f"C{index}", linestyle="--",
                             label=f"{label}, no adversarial loss")
        axis.set_xscale("log")
        axis.set_xlabel("adversarial weight")
        axis.set_title(title)
    axes[1].axhline(points[weighted[0]]["modality_chance"].mean(), color="black", linewidth=1, label="chance")
    axes[1].set_ylim(0, 1.05)
    for axis in axes:
        axis.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(0, -0.18), ncol=2)
    figure.suptitle(f"{len(points[weighted[0]])} seeds per point, mean ± std")
    figure.tight_layout()
    return figure


def write_sensitivity_figure(suite, out_dir):
    """sensitivity.png in the suite's results directory, from sensitivity_figure; its path printed."""
    figure = sensitivity_figure(suite, out_dir)
    if figure is None:
        print("no finished adversarial-weight row: no sensitivity figure")
        return
    path = os.path.join(out_dir, "results", suite, "sensitivity.png")
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
    print(f"figure: {path}")


def seed_figures(metrics):
    """One seed's figures that a record keeps, from its metrics.json (None where it has none)."""
    probes = metrics.get("decomposition") if isinstance(metrics.get("decomposition"), dict) else {}
    baseline = metrics.get("logistic_regression") if isinstance(metrics.get("logistic_regression"), dict) else {}
    return {**{key: metrics.get(key) for key in COLUMNS}, **{key: probes.get(key) for key in PROBE_COLUMNS},
            "logistic_regression_test_weighted_f1": baseline.get("test_weighted_f1")}


def record_rows(suite, out_dir):
    """{row: {'seeds': [...], 'figures': {figure: [one value per seed]}}} of every row whose seeds all finished."""
    rows = {}
    for row in SUITES[suite][1]:
        directory = run_dir(out_dir, suite, row)
        if not os.path.exists(os.path.join(directory, "summary.json")):
            continue
        seeds = read_summary(os.path.join(directory, "summary.json"))["seeds"]
        figures = [seed_figures(read_json(os.path.join(directory, f"seed{seed}", "metrics.json"))) for seed in seeds]
        rows[row] = {"seeds": seeds, "figures": {key: [f[key] for f in figures] for key in figures[0]},
                     "first_epochs": [first_epochs(os.path.join(directory, f"seed{seed}", "history.csv")) for seed in seeds]}
    return rows


FIRST_EPOCHS = 5  # how many of a run's first epochs a record keeps: the start of training, seed by seed


def first_epochs(path):
    """[[training accuracy, validation weighted-F1] of each of the first FIRST_EPOCHS epochs] from a history.csv."""
    try:
        check_regular_file(path, "history.csv")
        history = pd.read_csv(path, nrows=FIRST_EPOCHS)
        return [[float(a), float(f)] for a, f in zip(history["train_accuracy"], history["valid_weighted_f1"])]
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"error: {path}: no readable history ({error})") from None


def record_suite(name, suite, out_dir, extra, only=()):
    """benchmarks/measured/<name>.json from the suite's finished rows (with --rows, those rows only: the record's
    other rows are kept as they were measured, whatever else the --out_dir holds), with the command and machine."""
    rows = {row: figures for row, figures in record_rows(suite, out_dir).items() if not only or row in only}
    if not rows:
        raise SystemExit(f"--record={name}: no finished row of suite {suite} under {out_dir} to record")
    kept = read_record(name)["rows"] if os.path.exists(record_path(name)) else {}
    order = list(SUITES[suite][1])
    rows = dict(sorted({**kept, **rows}.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))
    arguments = " ".join(f'"{a}"' if " " in a else a for a in [f"--suite={suite}", *extra])
    write_record(name, {"suite": suite, "command": f"python -m benchmarks.results {arguments} --seeds=... --run",
                        "machine": machine(), "rows": rows})


def markdown(frame):
    """A pandas table as Markdown (without the optional 'tabulate' package)."""
    return markdown_table(list(frame.columns), frame.itertuples(index=False))


def main(argv):
    options = {"suite": "demo", "seeds": "1,2,3", "out_dir": os.path.join(ROOT, "saved_models"), "run": False, "rows": "",
               "jobs": "1", "record": "", "docs": False}
    extra = []
    for argument in argv:
        name, _, value = argument[2:].partition("=")
        if name in options:
            options[name] = value if name not in ("run", "docs") else value.lower() in ("", "true", "1")
        else:
            extra.append(argument)  # passed on to train_MALN.py, e.g. --features=... --epochs=...
    if options["docs"]:
        try:
            return update_documents()
        except (RecordError, OSError) as error:  # OSError: a document that cannot be written (a full disk)
            raise SystemExit(f"error: {error}") from None
        except KeyboardInterrupt:
            print("\ninterrupted: each document is rewritten whole or not at all; run --docs again to finish",
                  file=sys.stderr)
            raise SystemExit(130) from None
    if not options["jobs"].isdigit() or int(options["jobs"]) < 1:
        raise SystemExit(f"--jobs={options['jobs']}: must be a whole number >= 1")
    if not configurator.seed_list_of(options["seeds"]):
        raise SystemExit(f"--seeds={options['seeds']}: must be comma-separated integers >= 0, each once, e.g. 1,2,3")
    if options["suite"] not in SUITES:
        raise SystemExit(f"--suite={options['suite']}: choose one of {', '.join(SUITES)}")
    failures = []
    only = [r for r in options["rows"].split(",") if r]
    unknown = [r for r in only if r not in SUITES[options["suite"]][1]]
    if unknown:
        raise SystemExit(f"--rows: no row {unknown[0]!r} in suite {options['suite']}; its rows:\n  "
                         + "\n  ".join(SUITES[options["suite"]][1]))
    if options["run"]:
        hold_suite_lock(options["out_dir"], options["suite"])
        failures = train_missing(options["suite"], options["seeds"], options["out_dir"], extra, only, int(options["jobs"]))
    frame = table(options["suite"], options["out_dir"])
    print(markdown(frame) if not frame.empty else "no finished runs yet")
    probes = decomposition_table(options["suite"], options["out_dir"])
    if not probes.empty:
        print("\ndecomposition probes (fractions; linear probes fitted on train, scored on test):")
        print(markdown(probes))
    if options["record"]:
        try:
            record_suite(options["record"], options["suite"], options["out_dir"], extra, only)
        except RecordError as error:
            raise SystemExit(f"error: {error}") from None
    if options["suite"] == "adversarial":
        write_sensitivity_figure(options["suite"], options["out_dir"])
    if failures:
        raise SystemExit(f"{len(failures)} run(s) failed:\n" + "\n".join(failures))


if __name__ == "__main__":
    main(sys.argv[1:])
