"""Small shared pieces for the tests."""
import subprocess
import sys

import pyro
import torch

from conftest import ROOT


def run_cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run" / "svi.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def exact_posterior_guide(model):
    """The true posterior of a LinearGaussian model, as a guide program."""

    def guide(x, idx=None, latent_scales=None):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", model.posterior(x))

    return guide


def module_states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
