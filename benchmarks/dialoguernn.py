"""
The peer on the same vectors: conv-emotion's DialogueRNN (declare-lab/conv-emotion, DialogueRNN/model.py)
trained on a MALN feature file's text vectors. Its code is not in this repository: give the folder of a
conv-emotion checkout, and its model.py is imported from there, unmodified.

    git clone https://github.com/declare-lab/conv-emotion ../conv-emotion
    python -m benchmarks.dialoguernn --conv_emotion=../conv-emotion --features=Features/iemocap_finetuned.pkl --seed=0 [--record=NAME]

At the defaults of its train_IEMOCAP.py (BiModel with D_g = D_p = 500, D_e = D_h = 300, 'general'
attention, no active listener, dropout 0.1 and recurrent dropout 0.1, Adam 1e-4 with L2 1e-5, batch 30,
60 epochs, its class weights), with two differences, both this repository's protocol:
- D_m is the vectors' size (its script hard-codes 100, the size of its own features);
- the file's own train, valid and test dialogues (COSMIC's split), with the epoch selected on valid
  weighted-F1 (its script keeps the epoch of the lowest *test* loss); test is reported at that epoch.
IEMOCAP's six classes only (its class weights are IEMOCAP's); two parties per dialogue.
"""

import os
import sys
import time

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from benchmarks.records import machine, write_record
from dataloader import CLASS_NAMES, load_features
from maln.cli import parse_options

OPTIONS = {"conv_emotion": "", "features": "", "seed": 0, "epochs": 60, "threads": 1, "record": ""}
CLASS_WEIGHTS = [1 / 0.086747, 1 / 0.144406, 1 / 0.227883, 1 / 0.160585, 1 / 0.127711, 1 / 0.252668]  # train_IEMOCAP.py's
BATCH_SIZE = 30


def import_dialoguernn(checkout):
    """(BiModel, MaskedNLLLoss) from <checkout>/DialogueRNN/model.py."""
    path = os.path.join(checkout, "DialogueRNN", "model.py")
    if not os.path.isfile(path):
        raise SystemExit(f"--conv_emotion={checkout}: no DialogueRNN/model.py there (a declare-lab/conv-emotion checkout)")
    sys.path.insert(0, os.path.dirname(path))
    import model as dialoguernn  # conv-emotion's module
    return dialoguernn.BiModel, dialoguernn.MaskedNLLLoss


def batch_of(dialogues, size):
    """conv-emotion's IEMOCAP collate: text (L, B, D), party one-hot (L, B, 2), utterance mask (B, L), labels
    (B, L); and the mask of labelled utterances (B, L), which the loss and the scores read."""
    n = max(len(d) for d in dialogues)
    text, qmask = torch.zeros(n, len(dialogues), size), torch.zeros(n, len(dialogues), 2)
    umask, labels = torch.zeros(len(dialogues), n), torch.zeros(len(dialogues), n, dtype=torch.long)
    labelled = torch.zeros(len(dialogues), n)
    for b, d in enumerate(dialogues):
        text[:len(d), b] = d.features["t"]
        qmask[:len(d), b] = torch.nn.functional.one_hot(d.speakers, 2).float()
        umask[b, :len(d)] = 1
        labels[b, :len(d)] = d.labels.clamp(min=0)
        labelled[b, :len(d)] = (d.labels >= 0).float()
    return text, qmask, umask, labels, labelled


def run_epoch(model, loss_function, optimizer, dialogues, size, rng=None):
    """One pass (training when an optimizer is given) -> (weighted-F1, accuracy) in percent."""
    model.train(optimizer is not None)
    order = rng.permutation(len(dialogues)) if rng is not None else np.arange(len(dialogues))
    predictions, golds, masks = [], [], []
    for start in range(0, len(dialogues), BATCH_SIZE):
        text, qmask, umask, labels, labelled = batch_of([dialogues[i] for i in order[start:start + BATCH_SIZE]], size)
        with torch.set_grad_enabled(optimizer is not None):
            log_prob = model(text, qmask, umask, att2=True)[0]                            # (L, B, classes)
            flat = log_prob.transpose(0, 1).reshape(-1, log_prob.size(2))
            loss = loss_function(flat, labels.view(-1), labelled)
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        predictions.append(flat.argmax(1).numpy())
        golds.append(labels.view(-1).numpy())
        masks.append(labelled.view(-1).numpy())
    p, g, m = map(np.concatenate, (predictions, golds, masks))
    return 100 * f1_score(g, p, sample_weight=m, average="weighted"), 100 * accuracy_score(g, p, sample_weight=m)


def train(options):
    BiModel, MaskedNLLLoss = import_dialoguernn(options["conv_emotion"])
    torch.set_num_threads(options["threads"])
    np.random.seed(options["seed"])
    torch.manual_seed(options["seed"])
    data = load_features(options["features"], dataset="IEMOCAP", modalities="t")
    if data.class_names != CLASS_NAMES["IEMOCAP"]:
        raise SystemExit(f"{options['features']}: classes {data.class_names}; DialogueRNN's weights are IEMOCAP's")
    if any(int(d.speakers.max()) > 1 for split in data.splits.values() for d in split):
        raise SystemExit(f"{options['features']}: a dialogue with more than two parties; train_IEMOCAP.py has two")
    size = data.splits["train"][0].features["t"].shape[1]
    model = BiModel(size, 500, 500, 300, 300, n_classes=6, listener_state=False, context_attention="general",
                    dropout_rec=0.1, dropout=0.1)
    loss_function = MaskedNLLLoss(torch.tensor(CLASS_WEIGHTS))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    rng, history, best = np.random.default_rng(options["seed"]), [], None
    for epoch in range(1, options["epochs"] + 1):
        start = time.time()
        _, train_accuracy = run_epoch(model, loss_function, optimizer, data.splits["train"], size, rng)
        valid, _ = run_epoch(model, loss_function, None, data.splits["valid"], size)
        test, _ = run_epoch(model, loss_function, None, data.splits["test"], size)
        history.append({"epoch": epoch, "train_accuracy": train_accuracy, "valid_weighted_f1": valid, "test_weighted_f1": test})
        if best is None or valid > best["valid_weighted_f1"]:
            best = history[-1]
        print(f"epoch {epoch} | train acc {train_accuracy:.2f} | valid wF1 {valid:.2f} | test wF1 {test:.2f} | "
              f"{time.time() - start:.1f}s" + (" *" if best is history[-1] else ""), flush=True)
    return best, history


def main(argv):
    options, _ = parse_options(argv, OPTIONS, usage=__doc__)
    if not options["conv_emotion"] or not options["features"]:
        raise SystemExit(f"--conv_emotion= and --features= are required; usage: {__doc__}")
    best, history = train(options)
    optimistic = max(h["test_weighted_f1"] for h in history)
    print(f"selected epoch {best['epoch']} on valid weighted-F1 {best['valid_weighted_f1']:.2f}: test weighted-F1 "
          f"{best['test_weighted_f1']:.2f} (best test epoch, optimistic: {optimistic:.2f})")
    if options["record"]:
        write_record(options["record"], {
            "command": "python -m benchmarks.dialoguernn " + " ".join(argv), "machine": machine(),
            "history": history,
            "table": {"columns": ["model", "seed", "selected epoch", "valid wF1", "test wF1", "best-test-epoch wF1 (optimistic)"],
                      "rows": [["DialogueRNN (conv-emotion, its defaults)", str(options["seed"]), str(best["epoch"]),
                                f"{best['valid_weighted_f1']:.2f}", f"{best['test_weighted_f1']:.2f}", f"{optimistic:.2f}"]]}})


if __name__ == "__main__":
    main(sys.argv[1:])
