#!/usr/bin/env python
"""A Pyro autoguide on a library model: ``AutoNormal`` (free parameters per data point, through
the model's subsampling plate) on MFCVAE, whose facets have mixture-of-Gaussians priors, trained
on scikit-learn's 8x8 digits with minibatches scaled to the whole data set.

    python examples/autoguide_mfcvae.py [--steps 300]
"""
import argparse

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from sklearn.datasets import load_digits

from pyro_models import MFCVAE, MFCVAEConfig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    pyro.set_rng_seed(0)
    images = torch.tensor(load_digits().data >= 8, dtype=torch.float32)
    n = len(images)
    model = MFCVAE(MFCVAEConfig(data_dim=64, image_shape=(8, 8), clusters=(10, 10), encoder_backbone=(128, 128),
                                decoder_rungs=(128, 128), decoder_backbone=(128, 128)))
    guide = AutoNormal(model.model)
    svi = SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for step in range(args.steps):
        idx = torch.randint(n, (128,))
        loss = svi.step(images[idx], idx=idx, num_data=n) / n
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step}: -ELBO per digit (whole data set) {loss:.2f}")
    locs = pyro.param("AutoNormal.locs.z0")
    print(f"AutoNormal holds one location per digit and facet: {tuple(locs.shape)}")


if __name__ == "__main__":
    main()
