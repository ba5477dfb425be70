#!/usr/bin/env python
"""A library model in your own Pyro training loop: the VAE of Cremer et al. on scikit-learn's
8x8 digits, a guide from ``guides``, Pyro's ``SVI`` and ``pyro.optim`` (data passed positionally,
as Pyro's own examples do), then its IWAE bound on held-out digits.

    python examples/svi_library_model.py [--steps 500]
"""
import argparse

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from sklearn.datasets import load_digits

from guides import MeanFieldNormal, build_guide
from inference import evaluate_importance
from pyro_models import VAE, VAEConfig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args(argv)
    pyro.set_rng_seed(0)
    images = torch.tensor(load_digits().data >= 8, dtype=torch.float32)  # 1797 binary 8x8 digits
    train, test = images[:1500], images[1500:]
    vae = VAE(VAEConfig(data_dim=64, latent_dim=8, decoder_hidden=(128,), encoder_hidden=(128,)))
    encoder, width = vae.make_encoder()
    guide = build_guide(MeanFieldNormal, vae.latent_sites, encoder=encoder, encoder_dim=width)
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for step in range(args.steps):
        batch = train[torch.randint(len(train), (100,))]
        loss = svi.step(batch) / len(batch)
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step}: -ELBO per digit {loss:.2f}")
    vae.eval()
    result = evaluate_importance(vae.model, guide, {"x": test}, num_particles=100)
    print(f"held-out digits: ELBO {result.elbo.mean():.2f}, IWAE-100 {result.iwae.mean():.2f} nats per digit")


if __name__ == "__main__":
    main()
