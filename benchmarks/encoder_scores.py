"""
A fine-tuned text encoder scored on its own (the row the literature calls "RoBERTa": single
utterances, no context): the linear head extract_features.py --finetune=True saved with the encoder
of the selected epoch, applied to the valid and test rows of a table or a COSMIC transcript file.

    python -m benchmarks.encoder_scores --transcripts=../shared/data/cosmic_iemocap_transcripts.pkl --dataset=IEMOCAP --encoder=Features/iemocap_finetuned.encoder

Prints accuracy, weighted-F1 and each class's F1, in percent. Test rows are scored here only: the
fine-tuning never saw them. --record=NAME keeps the table in benchmarks/measured/NAME.json and the
fine-tuning's epochs (valid weighted-F1, seconds, training utterances a second, as the encoder's
info file holds them) in NAME_finetuning.json.
"""

import os
import sys

import numpy as np
from sklearn.metrics import f1_score

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from extraction import text_encoder
from dataloader import DataError
from extraction.table_features import read_table
from extraction.extract_features import parse_option, read_transcripts, resolve_device
from benchmarks.records import RecordError, machine, write_record
from utils import scores


def encoder_predictions(table, directory, splits=("valid", "test"), device="cpu"):
    """{split: (rows, labels, predictions)} of the saved head on the table's labelled rows of each split: the table's
    row indices, and class indices in the encoder's class names; -> (that, read_table's rows, the class names)."""
    info = text_encoder.read_encoder_info(directory)
    if not info:
        raise DataError(f"{directory}: not an encoder saved by extract_features.py --finetune=True (no {text_encoder.ENCODER_INFO})")
    names = info.get("class_names")
    if not (isinstance(names, list) and names and all(isinstance(c, str) and c for c in names) and len(set(names)) == len(names)):
        raise DataError(f"{os.path.join(directory, text_encoder.ENCODER_INFO)}: field 'class_names' must be a list of distinct "
                        f"class-name strings, got {type(names).__name__} {str(names)[:40]!r}")
    rows, _ = read_table(table, extra=("text",))
    if "text" not in rows:
        raise DataError("the table has no 'text' column: the encoder scores transcripts")
    encoder = text_encoder.load_head(text_encoder.load_encoder(directory, "", resolve_device(device)), directory, len(names))
    token_ids = text_encoder.tokenize(encoder, rows["text"])
    result = {}
    for split in splits:
        chosen = [i for i, (s, label) in enumerate(zip(rows["split"], rows["label"])) if s == split and label in names]
        labels = np.array([names.index(rows["label"][i]) for i in chosen])
        result[split] = (chosen, labels, text_encoder.predict_classes(encoder, token_ids, chosen))
    return result, rows, names


def encoder_scores(table, directory, device="cpu"):
    """{split: accuracy, weighted_f1, per_class_f1} of the saved head on the table's valid and test rows."""
    predicted, _, names = encoder_predictions(table, directory, device=device)
    result = {}
    for split, (_, labels, predictions) in predicted.items():
        per_class = f1_score(labels, predictions, labels=range(len(names)), average=None, zero_division=0)
        result[split] = {**scores(labels, predictions), "per_class_f1": dict(zip(names, (100 * per_class).round(2).tolist()))}
    return result


def finetuning_table(directory):
    """The fine-tuning's epochs as the encoder's info file holds them: one row each, the selected one marked."""
    info = text_encoder.read_encoder_info(directory)
    history = info.get("history")
    if not (isinstance(history, list) and history and all(isinstance(row, dict) for row in history)):
        raise DataError(f"{os.path.join(directory, text_encoder.ENCODER_INFO)}: no fine-tuning history to record")
    try:
        rows = [[f"{row['epoch']}" + (" (selected)" if row["epoch"] == info.get("selected_epoch") else ""),
                 f"{row['train_loss']:.3f}", f"{row['valid_weighted_f1']:.2f}", f"{row['seconds'] / 60:.1f}",
                 f"{row['train_utterances_per_second']:.1f}"] for row in history]
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{os.path.join(directory, text_encoder.ENCODER_INFO)}: a history row lacks a figure ({error})") from None
    return {"columns": ["epoch", "train loss", "valid wF1", "minutes", "training utterances/s"], "rows": rows}


def main(argv):
    options = dict(argument[2:].split("=", 1) for argument in argv if argument.startswith("--") and "=" in argument)
    if "encoder" not in options or ("table" in options) == ("transcripts" in options):
        raise SystemExit("usage: python -m benchmarks.encoder_scores --encoder=DIR (--table=CSV | --transcripts=PKL [--dataset=NAME]) "
                         "[--record=NAME]")
    try:
        table = options.get("table") or read_transcripts(options["transcripts"], options.get("dataset", ""))[0]
        result = encoder_scores(table, options["encoder"], parse_option("device", options.get("device", "cpu")))
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    for split, figures in result.items():
        print(f"{split}: accuracy {figures['accuracy']:.2f}, weighted-F1 {figures['weighted_f1']:.2f}; per class F1 "
              + ", ".join(f"{name} {value:.1f}" for name, value in figures["per_class_f1"].items()))
    if options.get("record"):
        names = list(result["test"]["per_class_f1"])
        rows = [[split, f"{f['accuracy']:.2f}", f"{f['weighted_f1']:.2f}", *(f"{f['per_class_f1'][n]:.1f}" for n in names)]
                for split, f in result.items()]
        command = "python -m benchmarks.encoder_scores " + " ".join(f"--{k}={v}" for k, v in options.items() if k != "record")
        try:
            history = finetuning_table(options["encoder"])
            write_record(options["record"], {"command": command, "machine": machine(),
                                             "table": {"columns": ["split", "accuracy", "weighted-F1", *names], "rows": rows}})
            write_record(f"{options['record']}_finetuning", {"command": f"the fine-tuning's history in {options['encoder']}",
                                                             "machine": machine(), "table": history})
        except (RecordError, DataError) as error:
            raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
