"""The user's workflow: the assignments at the top of train_MALN.py are what trains, unless the command
line names something over them (a settings file, --preset=NAME, --name=value); every setting that then
differs from the top is printed with where it came from, and recorded in metrics.json."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import train_MALN
from conftest import ROOT

PRESETS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "config")) if f.endswith(".py"))


def copy_of_the_repository(tmp_path):
    """The tracked files of this checkout, as a fresh clone has them."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
            shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    return tmp_path


def edit_top(clone, **values):
    """Replace `name = ...` assignments at the top of the clone's train_MALN.py, as a user would."""
    path = clone / "train_MALN.py"
    lines = path.read_text().splitlines(keepends=True)
    for name, value in values.items():
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name} = "))
        comment = lines[index][lines[index].index("#"):] if "#" in lines[index] else "\n"
        lines[index] = f"{name} = {value!r}  {comment}"
    path.write_text("".join(lines))


def python(clone, *arguments):
    return subprocess.run([sys.executable, *arguments], cwd=clone, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ""})


@pytest.mark.slow
def test_an_edit_at_the_top_of_the_script_is_what_the_demo_trains(tmp_path):
    clone = copy_of_the_repository(tmp_path / "clone")
    edit_top(clone, epochs=2, batch_size=32, learning_rate=1e-3)
    result = python(clone, "train_MALN.py", "--run_name=edited", "--export_features=False", "--threads=1")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((clone / "saved_models" / "edited" / "metrics.json").read_text())
    assert [metrics["config"][k] for k in ("epochs", "batch_size", "learning_rate")] == [2, 32, 1e-3]
    assert len(open(clone / "saved_models" / "edited" / "history.csv").readlines()) == 1 + 2
    assert "Overriding: epochs" not in result.stdout          # an edit is the baseline, not an override
    assert set(metrics["settings_changed"]) == {"run_name", "export_features", "threads"}


@pytest.mark.slow
def test_an_edit_at_the_top_is_what_iemocap_trains_and_its_preset_is_one_named_step_away(tmp_path):
    clone = copy_of_the_repository(tmp_path / "clone")
    edit_top(clone, average_decay=0.9, input_dropout=0.2, class_weights=True)
    code = ("import json, train_MALN; print(json.dumps([train_MALN.parse_overrides(a) for a in "
            "(['--dataset=IEMOCAP'], ['--dataset=IEMOCAP', '--preset=IEMOCAP'], ['config/iemocap.py'])]))")
    result = python(clone, "-c", code)
    assert result.returncode == 0, result.stderr
    plain, preset, config_file = json.loads(result.stdout)
    assert (plain["average_decay"], plain["input_dropout"], plain["class_weights"]) == (0.9, 0.2, True)
    assert (preset["average_decay"], preset["input_dropout"]) == (0.95, 0.3) and preset["dataset"] == "IEMOCAP"
    assert {**config_file, "preset": "IEMOCAP"} == preset


@pytest.mark.parametrize("dataset", ["IEMOCAP", "MELD", "demo"])
def test_the_dataset_chooses_the_data_and_nothing_else(dataset):
    config = train_MALN.parse_overrides([f"--dataset={dataset}"])
    assert {k: v for k, v in config.items() if v != train_MALN.HYPERPARAMETERS[k]} == \
        ({"dataset": dataset} if dataset != train_MALN.HYPERPARAMETERS["dataset"] else {})


@pytest.mark.parametrize("name", PRESETS)
def test_every_settings_file_is_valid_and_its_preset_name_reads_the_same_file(name):
    from_preset = train_MALN.parse_overrides([f"--preset={name}"])
    from_file = train_MALN.parse_overrides([os.path.join(ROOT, "config", f"{name}.py")])
    assert {**from_file, "preset": name} == from_preset
    assert train_MALN.parse_overrides([f"--preset={name.upper()}"]) == {**from_preset, "preset": name.upper()}


def test_the_command_line_wins_over_a_settings_file_wherever_it_stands():
    demo = os.path.join(ROOT, "config", "demo.py")
    assert train_MALN.parse_overrides(["--epochs=3", demo])["epochs"] == 3
    assert train_MALN.parse_overrides([demo, "--epochs=3"])["epochs"] == 3
    assert train_MALN.parse_overrides(["--preset=released", "--epochs=5"])["epochs"] == 5


@pytest.mark.slow
def test_every_setting_that_differs_from_the_top_is_printed_with_its_origin_and_recorded(tmp_path, capsys):
    train_MALN.main(["--preset=demo", "--epochs=1", f"--out_dir={tmp_path}", "--run_name=r", "--export_features=False",
                     "--threads=1"])
    printed = capsys.readouterr().out
    assert "Overriding: epochs = 1 (from the command line; the top of train_MALN.py has 30)" in printed
    assert "Overriding: batch_size = 16 (from config/demo.py; the top of train_MALN.py has 8)" in printed
    changed = json.loads((tmp_path / "r" / "metrics.json").read_text())["settings_changed"]
    assert changed["batch_size"] == {"value": 16, "top_of_script": 8, "from": os.path.join("config", "demo.py")}
    assert changed["epochs"]["from"] == "the command line"
    overriding = [line for line in printed.splitlines() if line.startswith("Overriding: ")]
    assert len(overriding) == len(changed)


@pytest.mark.parametrize("text, message", [
    ("import os\n", r"line 1: only plain assignments `name = value` may stand in a settings file"),
    ("epochs = 2\nepoch = 3\n", r"line 2: unknown setting 'epoch'"),
    ("epochs = '2'\n", r"line 1: epochs = '2' is not a int"),
    ("epochs = __import__('os').getpid()\n", r"line 1: epochs must be a literal"),
    ("preset = 'demo'\n", r"a settings file may not name a preset"),
    ("trust_pickle = True\n", r"a settings file may not set trust_pickle; only the command line widens trust"),
])
def test_a_settings_file_is_read_never_run_and_anything_else_is_one_line(tmp_path, text, message):
    path = tmp_path / "mine.py"
    path.write_text(text)
    with pytest.raises(SystemExit, match=message):
        train_MALN.parse_overrides([str(path)])


def test_an_unknown_preset_names_the_settings_files_there():
    with pytest.raises(SystemExit, match=r"--preset=iemocaps: no settings file config/iemocaps.py; choose one of demo, "):
        train_MALN.parse_overrides(["--preset=iemocaps"])
    with pytest.raises(SystemExit, match=r"no settings file"):
        train_MALN.parse_overrides(["--preset=../train_MALN"])
