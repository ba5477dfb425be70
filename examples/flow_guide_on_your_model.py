#!/usr/bin/env python
"""A library guide family on your own model: a RealNVP guide (``guides``) amortised by your own
``nn.Sequential`` encoder, trained on a small nonlinear latent-variable model you write in Pyro.
Any model works whose latent sites sit, with an event dimension, in a per-datapoint plate.

    python examples/flow_guide_on_your_model.py [--steps 300]
"""
import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from guides import LatentSite, RealNVPNormal, build_guide
from inference import evaluate_importance


def model(x):
    """z in R^2 ~ N(0, I); x = (z_1, z_1 z_2) + noise: a posterior a diagonal Gaussian cannot hold."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        mean = torch.stack([z[..., 0], z[..., 0] * z[..., 1]], -1)
        pyro.sample("x", dist.Normal(mean, 0.1).to_event(1), obs=x)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    pyro.set_rng_seed(0)
    z = torch.randn(500, 2)
    x = torch.stack([z[:, 0], z[:, 0] * z[:, 1]], -1) + 0.1 * torch.randn(500, 2)
    encoder = nn.Sequential(nn.Linear(2, 64), nn.ELU(), nn.Linear(64, 64), nn.ELU())
    guide = build_guide(RealNVPNormal, [LatentSite("z", 2)], encoder=encoder, encoder_dim=64)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    for step in range(args.steps):
        loss = svi.step(x) / len(x)
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step}: -ELBO per point {loss:.3f}")
    result = evaluate_importance(model, guide, {"x": x[:100]}, num_particles=200)
    print(f"ELBO {result.elbo.mean():.3f}, IWAE-200 {result.iwae.mean():.3f} nats per point")


if __name__ == "__main__":
    main()
