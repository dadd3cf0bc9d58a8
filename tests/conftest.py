import os
import signal

import pytest
import torch

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: lets cuda tests ask for determinism
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The demo settings the mechanics tests train with, pinned here so that re-choosing config/demo.py on validation
# does not move them (config/demo.py before its context switches: the dialogue GRU, the per-utterance SCLM)
DEMO_SETTINGS = ["--dataset=demo", "--epochs=15", "--batch_size=16", "--learning_rate=2e-3", "--sclm_mode=utterance"]
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
MINILM = os.path.join(SHARED_DATA, "iemocap_text_minilm.pkl")


# The fast tier (pytest -m "not slow", about 40 s on 2 cores) runs after each edit; CI runs every test.
# Slow: the hostile-input hardening, the extraction stage, and the tests marked @pytest.mark.slow (real training,
# a command in a fresh process, the real data files).
SLOW_MODULES = ("test_hostile", "test_safety", "test_robustness", "test_extract", "test_finetune")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__.startswith(SLOW_MODULES):
            item.add_marker(pytest.mark.slow)


torch.set_num_threads(1)  # the test models are small: a second thread only adds contention


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no cuda device"))])
def device(request):
    """A test taking `device` runs on cpu, and on cuda when there is one (select those with `pytest -k cuda`)."""
    return request.param


@pytest.fixture
def no_hang():
    """A test that would block (reading a FIFO) fails after 20 s instead of hanging the suite."""
    def stop(*_):
        raise TimeoutError("blocked for 20 s")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def deterministic(device):
    """cuda's deterministic kernels (and cuDNN's) for the test, where runs must repeat exactly: the
    default ones add floats in varying order (on an H200, two fresh runs differed by 1e-7 at epoch 2)."""
    if device != "cuda":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]
