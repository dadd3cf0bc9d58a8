"""benchmarks/demo_scale.py: the demo generator with more training dialogues, as a `maln` file
that train_MALN.py reads back as the same dialogues; nothing is written over."""

import pickle

import pytest
import torch

from benchmarks import demo_scale
from dataloader import load_features, make_demo


def test_the_larger_demo_file_reads_back_as_the_generated_dialogues(tmp_path):
    generated = make_demo(3, n_dialogues=(6, 2, 3))
    path = tmp_path / "demo.pkl"
    path.write_bytes(pickle.dumps(demo_scale.as_maln_file(generated)))
    loaded = load_features(str(path))
    assert loaded.class_names == generated.class_names
    for split in ("train", "valid", "test"):
        assert [d.dialogue_id for d in loaded.splits[split]] == [d.dialogue_id for d in generated.splits[split]]
        for read, made in zip(loaded.splits[split], generated.splits[split]):
            assert torch.equal(read.labels, made.labels)
            assert all(torch.equal(read.features[m], made.features[m]) for m in "tav")
            assert len(set(zip(read.speakers.tolist(), made.speakers.tolist()))) == len(made.speakers.unique())


def test_the_larger_demo_is_never_written_over_an_existing_file(tmp_path):
    path = tmp_path / "demo.pkl"
    path.write_bytes(b"kept")
    with pytest.raises(SystemExit, match="does not exist yet"):
        demo_scale.main(["--train_dialogues=4", f"--out={path}"])
    assert path.read_bytes() == b"kept"
