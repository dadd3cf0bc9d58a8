"""One run per folder at a time: a run's folder is locked (flock on .run.lock) while a live process writes
there, so a second train_MALN.py with the same --run_name or --resume, or a second results.py --run of the
same suite, refuses with the truth; a crashed run's lock is recognised as stale."""

import os
import shutil
import subprocess
import sys

import pytest

from training import run_files
import train_MALN
from test_hostile import arguments, finished_run, tiny_demo  # noqa: F401 (a fixture)
from benchmarks import results

HOLD = ("import fcntl, os, sys, time\n"
        "f = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(f, fcntl.LOCK_EX)\n"
        "os.pwrite(f, (str(os.getpid()) + '\\n').encode(), 0)\n"
        "print('held', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n")


@pytest.fixture
def holder():
    """Start another process that holds the lock of a directory (for `seconds`); -> that process."""
    started = []

    def hold(directory, seconds=120):
        os.makedirs(directory, exist_ok=True)
        process = subprocess.Popen([sys.executable, "-c", HOLD, os.path.join(directory, run_files.RUN_LOCK), str(seconds)],
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "held"
        started.append(process)
        return process
    yield hold
    for process in started:
        process.kill()
        process.wait()


@pytest.fixture
def no_data(monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: pytest.fail("loaded the data"))


def test_a_second_run_of_the_same_name_is_told_that_a_live_run_holds_it(tmp_path, holder, no_data):
    process = holder(tmp_path / "run")
    with pytest.raises(SystemExit, match=rf"^error: .*run is in use: a run that is still going \(process {process.pid}\) "
                                         rf"writes there; wait for it to finish"):
        train_MALN.main(arguments(tmp_path, "run"))


def test_resuming_a_run_that_is_still_going_is_refused_before_loading_anything(finished_run, tmp_path, holder, no_data):
    shutil.copytree(finished_run, tmp_path / "run")
    process = holder(tmp_path / "run")
    with pytest.raises(SystemExit, match=rf"^error: --resume: .*run is in use: a run that is still going \(process "
                                         rf"{process.pid}\) writes there; two runs in one folder would overwrite"):
        train_MALN.main([f"--resume={tmp_path / 'run'}", "--epochs=2"])


def test_a_crashed_runs_lock_is_stale_and_the_run_continues(finished_run, tmp_path, holder, monkeypatch):
    shutil.copytree(finished_run, tmp_path / "run")
    process = holder(tmp_path / "run")
    process.kill()
    process.wait()
    assert (tmp_path / "run" / run_files.RUN_LOCK).exists() and run_files.lock_holder(str(tmp_path / "run")) == ""
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    train_MALN.main([f"--resume={tmp_path / 'run'}", "--epochs=2"])
    assert not (tmp_path / "run" / run_files.RUN_LOCK).exists()  # released and removed when the run ended


def test_a_folder_holding_only_a_stale_lock_is_named_an_empty_leftover(tmp_path, holder, no_data):
    process = holder(tmp_path / "run", seconds=0)
    process.wait()
    with pytest.raises(SystemExit, match=r"run exists, empty: a run stopped there before its first epoch finished"):
        train_MALN.main(arguments(tmp_path, "run"))


def test_a_run_holds_its_lock_while_it_trains_and_releases_it_after(tmp_path, monkeypatch):
    monkeypatch.setattr(train_MALN, "load_dataset", lambda *args, **kwargs: tiny_demo())
    seen = []
    original = train_MALN.train_epoch

    def train_epoch(*args, **kwargs):
        seen.append(os.path.exists(tmp_path / "run" / run_files.RUN_LOCK))
        return original(*args, **kwargs)
    monkeypatch.setattr(train_MALN, "train_epoch", train_epoch)
    train_MALN.main(arguments(tmp_path, "run"))
    assert seen == [True] and not (tmp_path / "run" / run_files.RUN_LOCK).exists()


def test_a_second_results_run_of_a_suite_refuses_naming_the_first(tmp_path, holder, monkeypatch):
    process = holder(tmp_path / "results" / "demo")
    monkeypatch.setattr(results, "train_missing", lambda *args, **kwargs: pytest.fail("training started"))
    with pytest.raises(SystemExit, match=rf"^error: --run: .*results/demo is in use: another results.py --run \(process "
                                         rf"{process.pid}\)"):
        results.main(["--suite=demo", "--run", f"--out_dir={tmp_path}"])
