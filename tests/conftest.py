import os
from pathlib import Path

import pyro
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Small networks: one torch thread is faster, much faster when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_dir() -> Path:
    """The real data directory: skipped without PYRO_MODELS_DATA, a failure if it is set but wrong."""
    value = os.environ.get("PYRO_MODELS_DATA")
    if not value:
        pytest.skip("PYRO_MODELS_DATA is not set (CI sets it to ../shared/data)")
    path = Path(value)
    assert path.is_dir(), f"PYRO_MODELS_DATA={value} is not a directory"
    return path
