"""
Where the context is lost: a run's test weighted-F1 broken down by dialogue length, by parties per
dialogue, and by how many utterances back the same speaker last spoke, beside logistic regression
on single utterances of the same inputs (fitted on train) in the same groups.

    python train_MALN.py --preset=demo --run_name=context/full --seed=1
    python -m benchmarks.context saved_models/context/full [more runs ...] [--record=NAME]

Each test utterance's dialogue, position, label and prediction come from the run's features_test.npz
(export_features=True, the default) or, when it did not export, from its best.pt (the selected epoch)
run again on the test split. The data are rebuilt from the run's saved settings (the demo set, or
the feature file it names).

    python -m benchmarks.context RUN --encoder=DIR --transcripts=PKL [--record=NAME]

--encoder (with the transcript file the run's features came from) adds, per group, the fine-tuned
encoder's own head on single utterances (benchmarks.encoder_scores): on a fine-tuned file that head,
not logistic regression on the written vectors, is what the utterance alone gives.

    python -m benchmarks.context saved_models/context/full --probes=True [--record=NAME]

--probes=True asks instead what the context encoder's output and SCLM's vector hold by themselves
(the run's best.pt, every train and test utterance): linear probes of the emotion (logistic
regression, test weighted-F1) and, on the demo, where each speaker's offset is known, of that
offset (ridge regression, test R^2 of every offset dimension), beside the same probes on the
single utterance and on the mean of its speaker's utterances in the dialogue.
"""

import json
import os
import sys

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks.records import machine, write_record
from dataloader import make_batches
from maln.cli import parse_options
from MALN_model_fix import MALN
from train_MALN import HYPERPARAMETERS, evaluate, training_data
from utils import fit_logistic_regression, scores

GROUPS = {  # name -> (what is grouped, [(label, low, high)] inclusive bounds); every utterance falls in one bin of each
    "dialogue length": ("utterances in the dialogue", [("1-4", 1, 4), ("5-12", 5, 12), ("13-25", 13, 25), ("26+", 26, 10 ** 9)]),
    "parties": ("parties in the dialogue", [("1", 1, 1), ("2", 2, 2), ("3-4", 3, 4), ("5+", 5, 10 ** 9)]),
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


def breakdown(run_dir, encoder=None):
    """{group: {bin: (model wF1, logistic regression wF1, utterances, encoder wF1 or None)}} of one run's test split;
    `encoder`: (transcript file, fine-tuned encoder folder), whose own head is scored in the same groups."""
    feature_set = run_data(run_dir)
    test = feature_set.splits["test"]
    exported = test_predictions(run_dir, test)
    x_train, y_train = single_utterances(feature_set.splits["train"])
    labelled = y_train >= 0
    linear = fit_logistic_regression(x_train[labelled], y_train[labelled]).predict(single_utterances(test)[0])
    facts = utterance_facts(test)
    order = {(d.dialogue_id, i): row for row, (d, i) in enumerate((d, i) for d in test for i in range(len(d)))}
    rows_of_export = np.array([order[(str(d), int(i))] for d, i in zip(exported["dialogue_id"], exported["position"])])
    linear, facts = linear[rows_of_export], {name: values[rows_of_export] for name, values in facts.items()}  # export's order
    labels, predictions = exported["label"], exported["prediction"]
    alone = encoder_alone(*encoder, run_config(run_dir)["dataset"], feature_set, exported) if encoder else None
    keep = labels >= 0
    result = {}
    for group, (_, bins) in GROUPS.items():
        result[group] = {}
        for label, low, high in bins:
            rows = keep & (facts[group] >= low) & (facts[group] <= high)
            result[group][label] = (scores(labels[rows], predictions[rows])["weighted_f1"],
                                    scores(labels[rows], linear[rows])["weighted_f1"], int(rows.sum()),
                                    None if alone is None else scores(labels[rows], alone[rows])["weighted_f1"])
    return result


def encoder_alone(transcripts, directory, dataset, feature_set, exported):
    """The fine-tuned encoder's own head (benchmarks.encoder_scores) on each exported test utterance, in the run's
    class indices: what the utterance alone gives with the encoder the features came from."""
    from benchmarks.encoder_scores import encoder_predictions   # the extraction stage's packages, only when asked
    from extraction.extract_features import read_transcripts
    table = read_transcripts(transcripts, dataset)[0]
    predicted, rows, names = encoder_predictions(table, directory, splits=("test",))
    chosen, _, classes = predicted["test"]
    by_utterance = {(rows["dialogue_id"][i], int(rows["position"][i])): feature_set.class_names.index(names[c])
                    for i, c in zip(chosen, classes)}
    try:
        return np.array([by_utterance[(str(d), int(i))] for d, i in zip(exported["dialogue_id"], exported["position"])])
    except KeyError as missing:
        raise SystemExit(f"{transcripts}: no test utterance {missing} of the run's data: not the transcripts of its features") from None


def test_predictions(run_dir, test):
    """{dialogue_id, position, label, prediction} of every real test utterance at the selected epoch: the run's
    export, else its best.pt run again on `test` (a run trained with export_features=False)."""
    path = os.path.join(run_dir, "features_test.npz")
    if os.path.exists(path):
        return np.load(path)
    model = MALN.from_checkpoint(os.path.join(run_dir, "best.pt"))
    return evaluate(model, make_batches(test, 16), torch.device("cpu"), False, None, keep_vectors=True)["vectors"]


def run_config(run_dir):
    return {**HYPERPARAMETERS, **json.load(open(os.path.join(run_dir, "metrics.json")))["config"]}


def run_data(run_dir):
    return training_data(run_config(run_dir))



def party_means(dialogue, m):
    """(N, D) each utterance's mean over its speaker's utterances in the dialogue (the plain offset estimate)."""
    x, speakers = dialogue.features[m], dialogue.speakers
    one_hot = torch.nn.functional.one_hot(speakers).float()                                 # (N, P)
    return (one_hot @ (one_hot.T @ x / one_hot.sum(0).clamp(min=1).unsqueeze(1))).numpy()   # a silent party: no row


@torch.no_grad()
def inner_vectors(model, dialogues):
    """{name: (utterances, D)} of these dialogues, in order: per modality m the input (x_m), its speaker's
    mean (party_mean_m), the context encoder's output (context_m), SCLM's vector (sclm_m, with SCLM) and the
    generated speaker offset (offset_m, on the demo); 'label' (utterances,)."""
    captured, hooks = {}, []
    for m in model.config.modalities:
        hooks.append(model.context[m].register_forward_hook(lambda _, __, out, m=m: captured.__setitem__(f"context_{m}", out)))
        if model.sclm is not None:
            hooks.append(model.sclm[m].register_forward_hook(lambda _, __, out, m=m: captured.__setitem__(f"sclm_{m}", out)))
    vectors = {}
    try:
        for batch_dialogues, batch in make_batches(dialogues, 16):
            captured.clear()
            model(batch)
            real = batch["utterance_mask"]
            for name, value in captured.items():
                vectors.setdefault(name, []).append(value[real].numpy())
            for d in batch_dialogues:
                vectors.setdefault("label", []).append(d.labels.numpy())
                for m in model.config.modalities:
                    vectors.setdefault(f"x_{m}", []).append(d.features[m].numpy())
                    vectors.setdefault(f"party_mean_{m}", []).append(party_means(d, m))
                    if d.offsets is not None:
                        vectors.setdefault(f"offset_{m}", []).append(d.offsets[m].numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return {name: np.concatenate(parts) for name, parts in vectors.items()}


MAX_TRAIN = 5000  # a probe is fitted on at most this many train utterances, a seeded draw


def fitted_rows(count):
    return np.sort(np.random.default_rng(0).permutation(count)[:MAX_TRAIN])


def offset_r2(train, test, source, m):
    """Test R^2 (every offset dimension, variance-weighted) of a ridge regression of modality m's speaker offset
    from the vector `source`."""
    rows = fitted_rows(len(train[source]))
    probe = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(train[source][rows], train[f"offset_{m}"][rows])
    return 100 * r2_score(test[f"offset_{m}"], probe.predict(test[source]), multioutput="variance_weighted")


def probes(run_dir):
    """[(vector, emotion test wF1, offset test R^2 or None)] of one run: what each vector holds by itself."""
    model = MALN.from_checkpoint(os.path.join(run_dir, "best.pt"))
    feature_set = run_data(run_dir)
    train, test = (inner_vectors(model, feature_set.splits[split]) for split in ("train", "test"))
    modalities = model.config.modalities
    sources = {"the utterance alone (its inputs)": "x", "the mean of its speaker's utterances": "party_mean",
               "the context encoder's output": "context", **({"SCLM's vector": "sclm"} if model.sclm is not None else {})}
    rows = []
    for what, prefix in sources.items():
        keys = [f"{prefix}_{m}" for m in modalities]
        fit_x, fit_y = np.concatenate([train[k] for k in keys], 1), train["label"]
        chosen = fitted_rows(len(fit_y))
        fit_x, fit_y = fit_x[chosen], fit_y[chosen]
        labelled, test_labelled = fit_y >= 0, test["label"] >= 0
        predicted = fit_logistic_regression(fit_x[labelled], fit_y[labelled]).predict(
            np.concatenate([test[k] for k in keys], 1)[test_labelled])
        emotion = scores(test["label"][test_labelled], predicted)["weighted_f1"]
        offset = (float(np.mean([offset_r2(train, test, f"{prefix}_{m}", m) for m in modalities]))
                  if "offset_" + modalities[0] in train else None)
        rows.append((what, emotion, offset))
    return rows


def probe_table(runs):
    results = [probes(run) for run in runs]
    columns = ["vector", "emotion, linear probe: test wF1", "speaker offset, ridge probe: test R^2 (%)"]
    rows = []
    for k, (what, _, offset) in enumerate(results[0]):
        emotion = np.mean([r[k][1] for r in results])
        rows.append([what, f"{emotion:.2f}", "n/a" if offset is None else f"{np.mean([r[k][2] for r in results]):.1f}"])
    return columns, rows


def breakdown_table(runs, encoder=None):
    results = [breakdown(run, encoder) for run in runs]
    with_encoder = encoder is not None
    columns = ["group", "bin", "utterances", "MALN test wF1", "logistic regression test wF1", "difference",
               *(["encoder alone test wF1", "MALN - encoder"] if with_encoder else [])]
    rows = []
    for group, (_, bins) in GROUPS.items():
        for label, _, _ in bins:
            if results[0][group][label][2] == 0:  # no utterance in this bin (the demo has no dialogue under 5)
                continue
            model = [r[group][label][0] for r in results]
            linear = [r[group][label][1] for r in results]
            alone = [r[group][label][3] for r in results] if with_encoder else []
            rows.append([group, label, str(results[0][group][label][2]), f"{np.mean(model):.2f}", f"{np.mean(linear):.2f}",
                         f"{np.mean(model) - np.mean(linear):+.2f}",
                         *([f"{np.mean(alone):.2f}", f"{np.mean(model) - np.mean(alone):+.2f}"] if with_encoder else [])])
    return columns, rows


def main(argv):
    runs = [a for a in argv if not a.startswith("--")]
    options, _ = parse_options([a for a in argv if a.startswith("--")],
                               {"record": "", "probes": False, "encoder": "", "transcripts": ""}, usage=__doc__)
    if not runs or bool(options["encoder"]) != bool(options["transcripts"]):
        raise SystemExit(f"usage: {__doc__}")
    encoder = (options["transcripts"], options["encoder"]) if options["encoder"] else None
    columns, rows = probe_table(runs) if options["probes"] else breakdown_table(runs, encoder)
    widths = [max(len(str(c)) for c in column) for column in zip(columns, *rows)]
    for row in [columns, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    if options["record"]:
        write_record(options["record"], {"command": "python -m benchmarks.context " + " ".join(argv), "machine": machine(),
                                         "runs": runs, "table": {"columns": columns, "rows": rows}})


if __name__ == "__main__":
    main(sys.argv[1:])
