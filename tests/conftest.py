import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
MINILM = os.path.join(SHARED_DATA, "iemocap_text_minilm.pkl")


torch.set_num_threads(1)  # the test models are small: a second thread only adds contention


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no cuda device"))])
def device(request):
    """A test taking `device` runs on cpu, and on cuda when there is one (select those with `pytest -k cuda`)."""
    return request.param
