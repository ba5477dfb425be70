"""Small shared pieces for the tests."""
import gzip
import math
import struct
import subprocess
import sys

import numpy as np
import pyro
import pyro.distributions as dist
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


def two_facet_1d_mfcvae(initial_variance: float):
    """An MFCVAE on 8x8 images with two 1-d facets of 3 clusters (exact log p(x) by quadrature),
    its decoder sharpened so that the posterior is not the prior."""
    from pyro_models.mfcvae.model import MFCVAE, MFCVAEConfig

    torch.manual_seed(0)
    config = MFCVAEConfig(data_dim=64, image_shape=(8, 8), latent_dims=(1, 1), clusters=(3, 3),
                          encoder_backbone=(32, 32), decoder_rungs=(32, 32), decoder_backbone=(32, 32),
                          initial_variance=initial_variance)
    model = MFCVAE(config)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3.0)
    return model


def quadrature_log_px(model, x: torch.Tensor, size: int = 300, half_width: float = 6.0) -> torch.Tensor:
    """log p(x) of an MFCVAE with two 1-d facets by a Riemann sum over a grid of (z0, z1)."""
    grid = torch.linspace(-half_width, half_width, size)
    z0, z1 = (z.reshape(-1, 1) for z in torch.meshgrid(grid, grid, indexing="ij"))
    with torch.no_grad():
        log_prior = model.facet_prior(0).log_prob(z0) + model.facet_prior(1).log_prob(z1)
        likelihood = dist.Bernoulli(logits=model.decoder([z0, z1], None))
        log_joint = torch.stack([log_prior + likelihood.log_prob(point).sum(-1) for point in x])
    return torch.logsumexp(log_joint.double(), -1) + 2 * math.log(grid[1] - grid[0])
