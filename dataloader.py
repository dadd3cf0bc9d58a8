"""
Feature files for MALN: readers for the layouts researchers already have, the built-in demo
data set, and the batches (collate, make_batches).

Layouts (recognised from the file's content; Features/README.md documents each field):
  dialoguernn-iemocap  DialogueRNN IEMOCAP_features_raw.pkl, 9-tuple
  dialoguernn-meld     DialogueRNN MELD_features_raw.pkl, 9-tuple without visual
  mmgcn-meld           MMGCN MELD_features_raw1.pkl, 10-tuple with visual
  cosmic-iemocap       COSMIC iemocap_features_roberta.pkl, 10-tuple (text = mean of 4 vectors)
  cosmic-meld          COSMIC meld_features_roberta.pkl, 11-tuple
  maln                 this repository's own dict, written by extraction/table_features.py from a table of your own
A COSMIC text file may be joined by dialogue id with the audio and visual streams of a
DialogueRNN / MMGCN file (the paper's input configuration).

A 'maln' file from a table of your own utterances and one array per modality (extraction/, the
feature-extraction stage):
    python -m extraction.table_features --table=utterances.csv --t=text.npy --a=audio.npy --v=visual.npy --out=Features/mydata.pkl
From transcripts and wav files instead of arrays: python -m extraction.extract_features. Pickles
are read with maln/safe_pickle.py's restricted unpickler unless --trust_pickle=True.
"""

import os
import pickle
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from maln.safe_pickle import RefusedPickle, RestrictedUnpickler, TooLarge, expanded_values
from maln.files import check_regular_file, expansion_budget, size_text

MODALITIES = {"t": "text", "a": "audio", "v": "visual"}  # the streams a feature file may hold, in the order the model
# reads them (the first is cross-modal attention's primary): add a line to add a modality (docs/extending.md)
CLASS_NAMES = {
    "IEMOCAP": ["hap", "sad", "neu", "ang", "exc", "fru"],
    "MELD": ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"],
    "demo": ["happy", "angry", "sad", "calm"],
}
DEFAULT_FILES = {  # (text file, audio/visual file joined to it)
    "IEMOCAP": ("Features/iemocap_features_roberta.pkl", "Features/IEMOCAP_features_raw.pkl"),
    "MELD": ("Features/meld_features_roberta.pkl", "Features/MELD_features_raw1.pkl"),
}
SPLITS = ("train", "valid", "test")
MALN_KEYS = ("class_names", "speakers", "labels", "features", "splits")
SOURCES = ("IEMOCAP / MELD feature files come from the DialogueRNN, MMGCN and COSMIC releases "
           "(github declare-lab/conv-emotion); see Features/README.md")


class DataError(ValueError):
    """A feature file that is missing or not what it claims to be; the message names the file."""


@dataclass
class Dialogue:
    dialogue_id: str
    features: dict          # modality -> float32 tensor (N, D)
    speakers: torch.Tensor  # (N,) int64 party index
    labels: torch.Tensor    # (N,) int64 class index, -1 where unlabelled
    speaker_names: list = None  # the file's speaker string per utterance, where it names speakers
    offsets: dict = None    # the demo set only: modality -> (N, D) each utterance's speaker offset, as generated

    def __len__(self):
        return len(self.speakers)


@dataclass
class FeatureSet:
    source: str             # file name(s), or 'demo'
    layout: str
    class_names: list
    splits: dict            # 'train' / 'valid' / 'test' -> list of Dialogue
    info: dict = field(default_factory=dict)

    @property
    def modalities(self):
        return "".join(self.first_dialogue().features)

    @property
    def feature_sizes(self):
        return {m: x.shape[1] for m, x in self.first_dialogue().features.items()}

    def first_dialogue(self):
        """The first dialogue of any split (a file to predict on may have no training dialogue)."""
        return next(d for split in self.splits.values() for d in split)

    @property
    def max_length(self):
        return max(len(d) for split in self.splits.values() for d in split)

    def summary(self):
        """One line: the source, its layout, modalities, feature sizes, classes and dialogues per split."""
        return (f"{self.source} ({self.layout}): modalities {self.modalities} {self.feature_sizes}, "
                f"{len(self.class_names)} classes, dialogues train/valid/test "
                f"{'/'.join(str(len(self.splits[s])) for s in SPLITS)}")


# ----------------------------------------------------------------------------- pickles

def read_pickle(path, trust=False):
    """Load a feature pickle; refuse anything but data unless `trust` is set, and any file whose
    values would take more memory than its size allows (expansion_budget)."""
    if not os.path.exists(path):
        raise DataError(f"feature file not found: {path}\n{SOURCES}.\n`python train_MALN.py --dataset=demo` runs without any file.")
    try:
        check_regular_file(path, "feature file")
    except ValueError as error:
        raise DataError(str(error)) from None
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: is empty, not a feature file")
    budget = expansion_budget(os.path.getsize(path))
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1") if trust else RestrictedUnpickler(f, budget, encoding="latin1").load()
    except RefusedPickle as error:
        raise DataError(f"{path}: {error}. It is not a plain feature file; if you trust it, "
                        f"pass --trust_pickle=True") from None
    except TooLarge as error:
        raise DataError(f"{path}: {error} from {size_text(os.path.getsize(path))} on disk (at most {size_text(budget)} "
                        f"allowed); refused before allocating it") from None
    except Exception as error:  # truncated, not a pickle at all, or unreadable
        raise DataError(f"{path}: cannot be read as a feature pickle ({type(error).__name__}: {error})") from None
    try:
        values = expanded_values(data, budget // 4)
    except RefusedPickle as error:
        raise DataError(f"{path}: {error}; not a feature file") from None
    if 4 * values > budget:
        raise DataError(f"{path}: holds at least {values:,} values ({size_text(4 * values)} as float32) once its repeated "
                        f"references are expanded, from {size_text(os.path.getsize(path))} on disk (at most "
                        f"{size_text(budget)} allowed); refused before converting it")
    return data


# ----------------------------------------------------------------------------- layouts

FIELDS = {  # the elements of each tuple layout, in order
    "dialoguernn-iemocap": ("utterance ids", "speakers", "labels", "text", "audio", "visual", "sentences", "train split", "test split"),
    "dialoguernn-meld": ("utterance ids", "speakers", "labels", "text", "audio", "sentences", "train split", "test split", "sentiment"),
    "mmgcn-meld": ("utterance ids", "speakers", "labels", "text", "audio", "visual", "sentences", "train split", "test split",
                   "sentiment"),
    "cosmic-iemocap": ("speakers", "labels", "roberta1", "roberta2", "roberta3", "roberta4", "sentences", "train split",
                       "test split", "valid split"),
    "cosmic-meld": ("speakers", "labels", "sentiment", "roberta1", "roberta2", "roberta3", "roberta4", "sentences",
                    "train split", "test split", "valid split"),
}


def _is_id_collection(x):
    return isinstance(x, (list, tuple, set, frozenset, np.ndarray))


def detect_layout(data, path):
    """Name the layout of a loaded feature pickle from its structure."""
    if isinstance(data, dict) and data.get("format") == "maln-features":
        missing = [key for key in MALN_KEYS if key not in data]
        if missing:
            raise DataError(f"{path}: a maln-features file without {', '.join(missing)}")
        return "maln"
    if not isinstance(data, tuple) or not all(isinstance(x, dict) or _is_id_collection(x) for x in data):
        raise DataError(f"{path}: expected a tuple of dicts and id lists, got {type(data).__name__}")
    n = len(data)
    if n == 9:
        first = next(iter(data[5].values()), None)
        if isinstance(data[8], dict):
            return "dialoguernn-meld"
        if first is not None and not isinstance(first[0], str):
            return "dialoguernn-iemocap"
    if n == 10:
        return "mmgcn-meld" if isinstance(data[9], dict) else "cosmic-iemocap"
    if n == 11:
        return "cosmic-meld"
    candidates = [f"{name} ({len(names)}: {', '.join(names)})" for name, names in FIELDS.items() if len(names) == n]
    raise DataError(f"{path}: a tuple of {n} elements matches no known layout; "
                    + (f"of {n} elements: {'; '.join(candidates)}" if candidates else "known layouts: "
                       + "; ".join(f"{name} ({len(names)})" for name, names in FIELDS.items())))


MALN_FIELDS = {  # key of a 'maln' file -> (what it must be, test)
    "class_names": ("a list of class-name strings (empty in a file without labels)",
                    lambda v: isinstance(v, (list, tuple)) and all(isinstance(c, str) for c in v)),
    "speakers": ("a dict keyed by dialogue id", lambda v: isinstance(v, dict)),
    "labels": ("a dict keyed by dialogue id", lambda v: isinstance(v, dict)),
    "features": ("a dict of modality -> dict keyed by dialogue id",
                 lambda v: isinstance(v, dict) and len(v) > 0 and all(isinstance(x, dict) for x in v.values())),
    "splits": ("a dict of 'train', 'valid' and 'test' -> list of dialogue ids", lambda v: isinstance(v, dict)),
}


def check_fields(data, layout, path):
    """Each field of the layout has its type; COSMIC's four vectors agree per dialogue."""
    if layout == "maln":
        for name, (kind, valid) in MALN_FIELDS.items():
            if not valid(data[name]):
                raise DataError(f"{path}: field '{name}' must be {kind}, got {type(data[name]).__name__} {str(data[name])[:60]!r}")
        if len(set(data["class_names"])) != len(data["class_names"]):
            raise DataError(f"{path}: field 'class_names' repeats a name: {list(data['class_names'])}")
        for split in SPLITS:
            if split not in data["splits"]:
                raise DataError(f"{path}: field 'splits' has no '{split}' list"
                                + ("; give [] to hold out a share of training for validation" if split == "valid" else ""))
            if not _is_id_collection(data["splits"][split]):
                raise DataError(f"{path}: field 'splits': '{split}' must be a list of dialogue ids, got "
                                f"{type(data['splits'][split]).__name__}")
    for index, (name, value) in enumerate(zip(FIELDS.get(layout, ()), data)):
        is_split = name.endswith("split")
        if not (_is_id_collection(value) if is_split else isinstance(value, dict)):
            raise DataError(f"{path}: field '{name}' (element {index} of the {layout} tuple) is a {type(value).__name__}, "
                            f"expected a {'list of dialogue ids' if is_split else 'dict keyed by dialogue id'}")
    if layout.startswith("cosmic"):
        first, *others = [FIELDS[layout].index(f"roberta{k}") for k in range(1, 5)]
        for dialogue_id, x in data[first].items():
            for index in others:
                y = data[index].get(dialogue_id)
                if y is None or _shape(y) != _shape(x):
                    raise DataError(f"{path}: dialogue {dialogue_id!r}: field '{FIELDS[layout][index]}' has shape "
                                    f"{None if y is None else _shape(y)}, field 'roberta1' has {_shape(x)}")


def _shape(x):
    try:
        return np.shape(x)
    except ValueError:  # vectors of different sizes
        return "ragged"


def mean_of_four(r1, r2, r3, r4):
    """COSMIC's text: {dialogue id: the mean of its four RoBERTa feature vectors per utterance}."""
    return {k: (np.asarray(r1[k], np.float32) + np.asarray(r2[k], np.float32) + np.asarray(r3[k], np.float32)
                + np.asarray(r4[k], np.float32)) / 4 for k in r1}


def _parse(data, layout):
    """-> per-dialogue speakers, labels, {modality: features}, and split id lists (valid may be None)."""
    if layout == "dialoguernn-iemocap":
        _, speakers, labels, text, audio, visual, _, train, test = data
        streams, valid = {"t": text, "a": audio, "v": visual}, None
    elif layout == "dialoguernn-meld":
        _, speakers, labels, text, audio, _, train, test, _ = data
        streams, valid = {"t": text, "a": audio}, None
    elif layout == "mmgcn-meld":
        _, speakers, labels, text, audio, visual, _, train, test, _ = data
        streams, valid = {"t": text, "a": audio, "v": visual}, None
    elif layout == "cosmic-iemocap":
        speakers, labels, r1, r2, r3, r4, _, train, test, valid = data
        streams = {"t": mean_of_four(r1, r2, r3, r4)}
    elif layout == "cosmic-meld":
        speakers, labels, _, r1, r2, r3, r4, _, train, test, valid = data
        streams = {"t": mean_of_four(r1, r2, r3, r4)}
    elif layout == "maln":
        speakers, labels, streams = data["speakers"], data["labels"], data["features"]
        train, valid, test = (data["splits"][s] for s in SPLITS)
    valid = valid if valid is not None and len(valid) else None  # no validation dialogues: a share of train is held out
    return speakers, labels, streams, {"train": list(train), "valid": None if valid is None else list(valid), "test": list(test)}


def speaker_indices(speakers):
    """Party index per utterance: 'M'/'F' -> 0/1, one-hot vectors -> their hot index,
    names -> order of first appearance in the dialogue."""
    first = speakers[0]
    if isinstance(first, str) and set(speakers) <= {"M", "F"}:
        return np.array([0 if s == "M" else 1 for s in speakers], np.int64)
    if not isinstance(first, str) and np.ndim(first) == 1:
        return np.asarray(speakers).argmax(-1).astype(np.int64)
    order = {}
    return np.array([order.setdefault(s, len(order)) for s in speakers], np.int64)


def make_dialogue(dialogue_id, streams, speakers, labels, n_classes, path):
    """Check one dialogue's fields against each other and convert them to tensors."""
    where = f"{path}: dialogue {dialogue_id!r}"
    if not isinstance(speakers, (list, tuple, np.ndarray)) or not isinstance(labels, (list, tuple, np.ndarray)):
        raise DataError(f"{where}: speakers and labels must be lists, got {type(speakers).__name__} and {type(labels).__name__}")
    n = len(speakers)
    if n == 0:
        raise DataError(f"{where}: has no utterances")
    features = {m: torch.from_numpy(feature_matrix(x, n, f"{where}: modality '{m}'")) for m, x in streams.items()}
    names = [str(s) for s in speakers] if isinstance(speakers[0], str) else None
    try:
        parties = speaker_indices(speakers)
    except (ValueError, TypeError, IndexError) as error:
        raise DataError(f"{where}: speakers are not party names, 'M'/'F' or one-hot vectors ({error})") from None
    return Dialogue(str(dialogue_id), features, torch.from_numpy(parties),
                    torch.from_numpy(label_indices(labels, n, n_classes, where)), names)


def feature_matrix(x, n, where):
    """One modality of a dialogue as a finite float32 (n, D) array."""
    try:
        x = np.asarray(x, np.float32)
    except (ValueError, TypeError) as error:
        raise DataError(f"{where} is not a matrix of numbers ({error})") from None
    if x.ndim != 2 or len(x) != n:
        raise DataError(f"{where} has shape {x.shape}, expected ({n}, D) for its {n} speakers")
    if x.shape[1] == 0:
        raise DataError(f"{where} has shape {x.shape}: no feature columns")
    not_finite, too_large = bad_rows(x)
    if len(not_finite):
        raise DataError(f"{where} contains NaN or inf (utterances {not_finite[:5].tolist()})")
    if len(too_large):
        raise DataError(f"{where} has values beyond ±{LARGEST_FEATURE:g} (utterance {too_large[0]}: "
                        f"{np.abs(x[too_large[0]]).max():.3g}), which overflow in training; rescale the features")
    return x


LARGEST_FEATURE = 1e15  # squares summed over 10^4 dimensions stay within float32; openSMILE ComParE functionals reach 1e12


def bad_rows(x):
    """Rows of a float32 (n, D) array holding NaN or inf, and rows holding values beyond ±LARGEST_FEATURE."""
    finite = np.isfinite(x).all(1)
    return np.flatnonzero(~finite), np.flatnonzero(finite & (np.abs(x).max(1) > LARGEST_FEATURE))


def label_indices(labels, n, n_classes, where):
    """Labels as int64 class indices, -1 where unlabelled (None)."""
    if len(labels) != n:
        raise DataError(f"{where}: {len(labels)} labels for {n} utterances")
    bad = [y for y in labels if y is not None and not (isinstance(y, (int, float, np.number)) and float(y).is_integer()
                                                       and -1 <= y < n_classes)]
    if bad:
        raise DataError(f"{where}: label {bad[0]!r} is outside the {n_classes} classes (0-{n_classes - 1}, -1 or None unlabelled)")
    return np.array([-1 if y is None else y for y in labels], np.int64)


def split_validation(train_ids, fraction, seed):
    """A seeded share of the training dialogues, held out for model selection; at least one, and
    none from a single training dialogue (training then refuses an empty validation split)."""
    ids = sorted(train_ids, key=str)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_valid = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    valid = {ids[i] for i in order[:n_valid]}
    return [i for i in ids if i not in valid], [ids[i] for i in sorted(order[:n_valid])]


def load_features(path, dataset=None, av_path=None, modalities="", valid_fraction=0.1, split_seed=100, trust=False):
    """Read a feature file (and optionally the audio/visual file joined to it) into a FeatureSet.
    Whatever is wrong with a file is one DataError naming it."""
    try:
        return _load_features(path, dataset, av_path, modalities, valid_fraction, split_seed, trust)
    except DataError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:  # a check above missed it
        raise DataError(f"{path}{' + ' + av_path if av_path else ''}: not a feature file of a known layout "
                        f"({type(error).__name__}: {error})") from None


def _load_features(path, dataset, av_path, modalities, valid_fraction, split_seed, trust):
    data = read_pickle(path, trust)
    layout = detect_layout(data, path)
    check_fields(data, layout, path)
    speakers, labels, streams, ids = _parse(data, layout)
    source = path
    if av_path:
        av_data = read_pickle(av_path, trust)
        av_layout = detect_layout(av_data, av_path)
        check_fields(av_data, av_layout, av_path)
        _, _, av_streams, _ = _parse(av_data, av_layout)
        streams.update({m: x for m, x in av_streams.items() if m != "t"})  # its audio and visual; text is the first file's
        layout, source = f"{layout}+{av_layout}", f"{path} + {av_path}"
    if layout.startswith("maln"):
        class_names = list(data["class_names"])
    elif dataset in ("IEMOCAP", "MELD"):
        class_names = CLASS_NAMES[dataset]
    else:
        class_names = CLASS_NAMES["MELD" if "meld" in layout else "IEMOCAP"]
    available = "".join(m for m in MODALITIES if m in streams)
    if not available:
        raise DataError(f"{source}: has no modality {', '.join(map(repr, MODALITIES))} (its features are {list(streams)[:5]}; "
                        f"a new modality is a line of dataloader.MODALITIES)")
    unknown = [m for m in streams if m not in MODALITIES]
    if unknown:
        raise DataError(f"{source}: holds the stream(s) {', '.join(map(repr, unknown))}, which are no modality of "
                        f"dataloader.MODALITIES ({', '.join(map(repr, MODALITIES))}); add a line there to train on them")
    modalities = modalities or available
    missing = [m for m in modalities if m not in available]
    if missing:
        raise DataError(f"{source}: has no modality {''.join(missing)!r} (it has {available!r}); "
                        f"choose --modalities= among those, or join audio/visual with --av_features=")
    check_ids(ids, source)
    check_splits(ids, {"speakers": speakers, "labels": labels, **{m: streams[m] for m in modalities}}, source)
    if ids["valid"] is None:
        ids["train"], ids["valid"] = split_validation(ids["train"], valid_fraction, split_seed)
    splits = {split: [make_dialogue(i, {m: streams[m][i] for m in modalities}, speakers[i], labels[i], len(class_names), source)
                      for i in split_ids] for split, split_ids in ids.items()}
    check_feature_sizes(splits, source)
    return FeatureSet(source, layout, class_names, splits)


# ----------------------------------------------------------------------------- splits and checks

def check_training_splits(feature_set, select_on="valid"):
    """Training needs dialogues in every split and labelled utterances in train and valid (an epoch
    is selected on valid); test may be unlabelled (the run reports no test scores then). With
    select_on='test' (the release's protocol: validation folded into train) valid is empty and the
    epoch is selected on test, which must then be labelled. Predicting needs none of this."""
    source, splits = feature_set.source, feature_set.splits
    for split in SPLITS:
        if not splits[split] and not (split == "valid" and select_on == "test"):
            held_out = (" (a file without validation dialogues has a share of its training dialogues held out, "
                        "which needs at least 2 of them)" if split == "valid" else "")
            raise DataError(f"{source}: the {split} split has no dialogue{held_out}; training needs train, valid and "
                            f"test dialogues")
    if not any((d.labels >= 0).any() for d in splits["train"]):
        raise DataError(f"{source}: no labelled training utterance; training needs labels (--predict=CHECKPOINT does not)")
    if select_on == "test" and not any((d.labels >= 0).any() for d in splits["test"]):
        raise DataError(f"{source}: the test split has no labelled utterance, so --select_on=test cannot select an epoch")
    if select_on == "valid" and not any((d.labels >= 0).any() for d in splits["valid"]):
        raise DataError(f"{source}: the valid split ({len(splits['valid'])} dialogues) has no labelled utterance, so no "
                        f"epoch could be selected on it; label some of its utterances, or list no valid dialogue so "
                        f"that a seeded --valid_fraction of the training dialogues is held out")


def inverse_frequency_weights(dialogues, n_classes, device):
    """Class weights n / (classes x n_c) from these (training) dialogues' labels, (C,)."""
    counts = torch.bincount(torch.cat([d.labels[d.labels >= 0] for d in dialogues]), minlength=n_classes).float()
    weights = counts.sum() / (n_classes * counts.clamp(min=1))
    return weights.to(device)


def selection_splits(feature_set, select_on):
    """The splits of a run's protocol: as loaded for select_on='valid'; for 'test' (the release's), the
    validation dialogues folded into train, so the whole train split trains and valid is empty."""
    if select_on == "valid" or not feature_set.splits["valid"]:
        return feature_set
    splits = feature_set.splits
    return replace(feature_set, splits={**splits, "train": splits["train"] + splits["valid"], "valid": []})


def check_dialogue_lengths(max_positions, sclm_mode, chosen, source, whose="the checkpoint's model", remedy=""):
    """Every (split, dialogue) chosen fits a position table of max_positions rows (DataError naming the first that does not)."""
    longest = max_positions - 1 if sclm_mode != "off" else None  # one position is [CLS]
    for split, dialogue in chosen:
        if longest is not None and len(dialogue) > longest:
            raise DataError(f"{source}: {split} dialogue {dialogue.dialogue_id!r} has {len(dialogue)} utterances; "
                            f"{whose} reads at most {longest} (its max_positions={longest + 1}){remedy}")


def check_ids(ids, source):
    """Dialogue ids are hashable, and no two of them read the same as text (1 and '1'): the
    predictions and exported vectors write ids as text."""
    as_text = {}
    for split, split_ids in ids.items():
        for i in split_ids or ():
            try:
                hash(i)
            except TypeError:
                raise DataError(f"{source}: the {split} split lists {str(i)[:60]!r}, a {type(i).__name__}, "
                                f"which cannot be a dialogue id (use a str or an int)") from None
            other = as_text.setdefault(str(i), i)
            if other is not i and other != i:  # equal ids: check_splits names the repeat
                raise DataError(f"{source}: dialogue ids {other!r} ({type(other).__name__}) and {i!r} ({type(i).__name__}) "
                                f"are different ids that read the same as text; rename one of them")


def check_splits(ids, fields, source):
    """Every split id is in every field, and no dialogue is in two splits (or twice in one)."""
    seen = {}
    for split, split_ids in ids.items():
        for i in split_ids or ():  # valid is None until split_validation
            if i in seen:
                raise DataError(f"{source}: dialogue {i!r} is in the {seen[i]} split and again in the {split} split "
                                f"(train / valid / test must not share dialogues)")
            seen[i] = split
            for name, values in fields.items():
                if i not in values:
                    raise DataError(f"{source}: {split} dialogue {i!r} has no {name!r} (the split lists it, the field does not)")


def check_feature_sizes(splits, source):
    """Every dialogue has the same feature size per modality."""
    first = {}
    for dialogue in (d for dialogues in splits.values() for d in dialogues):
        for m, x in dialogue.features.items():
            reference = first.setdefault(m, dialogue)
            if x.shape[1] != reference.features[m].shape[1]:
                raise DataError(f"{source}: dialogue {dialogue.dialogue_id!r}: modality '{m}' has {x.shape[1]} features "
                                f"per utterance, dialogue {reference.dialogue_id!r} has {reference.features[m].shape[1]}")


# ----------------------------------------------------------------------------- demo data

def make_demo(seed=0, n_dialogues=(240, 30, 60), sizes=(24, 16, 20), switch=0.2, signal=1.5, noise=1.0, speaker_scale=1.0,
              common=0.0):
    """A synthetic multimodal conversation data set that tests what MALN is built for.

    Four emotions = (valence, arousal): happy (+,+), angry (-,+), sad (-,-), calm (+,-).
    Each dialogue has 5-40 utterances and 2-9 speakers. Each speaker's emotion persists
    (changes with probability `switch` per utterance of theirs), so context helps. Every
    modality carries a per-speaker offset, so speaker modelling helps. Text shows valence
    only, audio arousal only, visual their product (same sign or not), so no single
    modality can tell the four classes apart and any two can. Audio and visual carry a
    per-dialogue channel vector (modality-specific nuisance); all carry Gaussian noise.

    With `common` > 0 (a variant, not the default demo) every modality also shows the whole
    emotion, valence and arousal each along a random direction of its own, at that strength: a
    part the modalities share, which a modality-invariant common vector could capture. The default
    demo has none (0): what one modality tells of the emotion is not what another tells.

    info['oracle_accuracy'] is the accuracy of the Bayes-optimal decision that knows every
    generating parameter (offsets, channels, class directions, the persistence), computed
    per speaker by forward-backward: no model can expect to beat it.
    """
    rng = np.random.default_rng(seed)
    valence, arousal = np.array([1, -1, -1, 1]), np.array([1, 1, -1, -1])
    codes = {"t": valence, "a": arousal, "v": valence * arousal}
    directions = {m: (lambda u: u / np.linalg.norm(u))(rng.normal(size=d)) for m, d in zip(codes, sizes)}
    means = {m: signal * codes[m][:, None] * directions[m][None] for m in codes}              # (4, D_m)
    if common:
        shared = np.random.default_rng([seed, 1])                                           # the default demo's draws unchanged
        for m, d in zip(codes, sizes):
            along_valence, along_arousal = (u / np.linalg.norm(u) for u in shared.normal(size=(2, d)))
            means[m] = means[m] + common * (valence[:, None] * along_valence + arousal[:, None] * along_arousal)
    K = 4
    transition = np.full((K, K), switch / (K - 1))
    np.fill_diagonal(transition, 1 - switch)
    splits, correct, total = {}, 0, 0
    for split, count in zip(("train", "valid", "test"), n_dialogues):
        dialogues = []
        for index in range(count):
            n = int(rng.integers(5, 41))
            n_parties = int(rng.integers(2, min(9, n) + 1))
            speakers = rng.integers(0, n_parties, n)
            emotion = rng.integers(0, K, n_parties)
            labels = np.empty(n, np.int64)
            for i, p in enumerate(speakers):
                if i > 0 and rng.random() < switch:
                    emotion[p] = rng.choice([k for k in range(K) if k != emotion[p]])
                labels[i] = emotion[p]
            features, offsets, loglik = {}, {}, np.zeros((n, K))
            for m, d in zip(codes, sizes):
                offset = speaker_scale * rng.normal(size=(n_parties, d))
                channel = 0.5 * rng.normal(size=d) if m != "t" else np.zeros(d)
                clean = offset[speakers] + channel
                x = means[m][labels] + clean + noise * rng.normal(size=(n, d))
                loglik -= (((x - clean)[:, None, :] - means[m][None]) ** 2).sum(-1) / (2 * noise ** 2)   # (n, K)
                features[m], offsets[m] = x.astype(np.float32), torch.from_numpy(offset[speakers].astype(np.float32))
            if split == "test":
                predicted = speaker_posteriors(loglik, speakers, transition).argmax(1)
                correct, total = correct + int((predicted == labels).sum()), total + n
            dialogues.append(Dialogue(f"demo_{split}_{index}", {m: torch.from_numpy(x) for m, x in features.items()},
                                      torch.from_numpy(speakers.astype(np.int64)), torch.from_numpy(labels), offsets=offsets))
        splits[split] = dialogues
    return FeatureSet("demo", "demo", CLASS_NAMES["demo"], splits, {"oracle_accuracy": correct / total, "seed": seed,
                                                                    **({"demo_common": common} if common else {})})


def speaker_posteriors(loglik, speakers, transition):
    """(N, K) posterior of each utterance's state under an HMM run separately along each
    speaker's utterances (forward-backward), from the (N, K) log-likelihoods."""
    posteriors = np.empty(loglik.shape)
    for p in np.unique(speakers):
        rows = np.flatnonzero(speakers == p)
        likelihood = np.exp(loglik[rows] - loglik[rows].max(1, keepdims=True))      # (T, K)
        alpha, beta = np.empty_like(likelihood), np.ones_like(likelihood)
        alpha[0] = likelihood[0] / likelihood[0].sum()
        for t in range(1, len(rows)):
            a = (alpha[t - 1] @ transition) * likelihood[t]
            alpha[t] = a / a.sum()
        for t in range(len(rows) - 2, -1, -1):
            b = transition @ (likelihood[t + 1] * beta[t + 1])
            beta[t] = b / b.sum()
        posterior = alpha * beta
        posteriors[rows] = posterior / posterior.sum(1, keepdims=True)
    return posteriors


def load_dataset(dataset, features="", av_features="", modalities="", valid_fraction=0.1, split_seed=100,
                 trust_pickle=False, demo_seed=0, demo_common=0.0):
    """The FeatureSet a run asks for: the demo set (its variant with a common part when demo_common > 0),
    or the named / default feature files."""
    if dataset == "demo" and not features:
        demo = make_demo(demo_seed, common=demo_common)
        for dialogues in demo.splits.values():
            for d in dialogues:
                d.features = {m: d.features[m] for m in (modalities or d.features)}
        return demo
    if not features:
        if dataset not in DEFAULT_FILES:
            raise DataError(f"unknown dataset {dataset!r}: choose IEMOCAP, MELD or demo, or give --features=PATH")
        features, default_av = DEFAULT_FILES[dataset]
        av_features = av_features or (default_av if modalities != "t" else "")
    label_set = None if dataset == "demo" else dataset  # the default dataset: classes come from the file's layout
    return load_features(features, label_set, av_features or None, modalities, valid_fraction, split_seed, trust_pickle)


# ----------------------------------------------------------------------------- batches

def collate(dialogues):
    """Pad a list of dialogues into one batch: the dict MALN.forward reads, whose docstring says what
    each tensor holds (padding: speaker 0, label -1)."""
    lengths = torch.tensor([len(d) for d in dialogues])
    return {
        "features": {m: pad_sequence([d.features[m] for d in dialogues], batch_first=True)    # (B, N, D_m)
                     for m in dialogues[0].features},
        "speakers": pad_sequence([d.speakers for d in dialogues], batch_first=True),          # (B, N)
        "utterance_mask": torch.arange(int(lengths.max()))[None] < lengths[:, None],         # (B, N)
        "labels": pad_sequence([d.labels for d in dialogues], batch_first=True, padding_value=-1),  # (B, N)
        "lengths": lengths,                                                                  # (B,) stays on cpu
    }


def make_batches(dialogues, batch_size, generator=None, bucket=False):
    """Batches of dialogues: by length without a generator; with one, in random order, or with
    `bucket`, shuffled, sorted by length within pools of 4 batches, then the batches shuffled,
    so that a batch holds dialogues of similar length (less padding, shorter recurrences).
    -> [(the batch's dialogues, collate of them)]."""
    if generator is None:
        order = sorted(range(len(dialogues)), key=lambda i: len(dialogues[i]))
    else:
        order = torch.randperm(len(dialogues), generator=generator).tolist()
        if bucket:
            pool = 4 * batch_size
            order = [i for s in range(0, len(order), pool) for i in sorted(order[s:s + pool], key=lambda i: len(dialogues[i]))]
    groups = [[dialogues[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
    if generator is not None and bucket:
        groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
    return [(group, collate(group)) for group in groups]


def to_device(batch, device):
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k not in ("features", "lengths")}
    moved["features"] = {m: x.to(device, non_blocking=True) for m, x in batch["features"].items()}
    moved["lengths"] = batch["lengths"]
    return moved
