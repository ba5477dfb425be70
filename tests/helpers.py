"""Small shared pieces for the tests."""
import gzip
import struct
import subprocess
import sys

import numpy as np
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


def write_fake_fashion_mnist(root):
    """Fashion-MNIST's four IDX files under ``root/fashion_mnist`` (12 train, 4 test images of
    random pixels): the format is real, the md5 sums are not the published ones."""
    rng = np.random.default_rng(0)
    folder = root / "fashion_mnist"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 12))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (4, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 4))
    return folder


def write_idx(path, array: np.ndarray):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.astype(np.uint8).tobytes())
