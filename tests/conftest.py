"""Fixtures and small builders shared by the tests."""
import os
from pathlib import Path

import pyro
import pytest
import torch
from torch import nn

from guides import MeanFieldNormal, build_guide
from pyro_models import LinearGaussian, LinearGaussianConfig
from pyro_models.networks import KeywordInput

ROOT = Path(__file__).resolve().parents[1]


def known_answer(points: int, noise_scale: float = 0.3, seed: int = 1, dtype=torch.float32, data_dim: int = 6,
                 latent_dim: int = 3):
    """(model, x): a linear-Gaussian model (exact log p(x) and posterior) initialised from ``seed``
    and ``points`` points drawn from it; the estimators' known-answer test bed."""
    torch.manual_seed(seed)
    model = LinearGaussian(LinearGaussianConfig(data_dim=data_dim, latent_dim=latent_dim,
                                                noise_scale=noise_scale)).to(dtype)
    with torch.no_grad():
        x = model.marginal().sample((points,))
    return model, x


def linear_ffg_guide(model):
    """An amortised FFG guide whose encoder is the identity: q's parameters are a linear map of x
    (the exact posterior's mean is linear in x, so this family can hold the best diagonal q)."""
    width = model.config.data_dim
    return build_guide(MeanFieldNormal, model.latent_sites, encoder=KeywordInput(nn.Identity()), encoder_dim=width)


if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N workers share the cores, so each takes one
    torch.set_num_threads(1)                  # (.ci/run on 2 cores: 13m36s with two threads per worker, 10m02s with one)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # and the commands the tests start inherit it


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
