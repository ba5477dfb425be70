#!/usr/bin/env python
"""NUTS on one data point's posterior p(z | x) under a library VAE: the model is a plain Pyro
program, so Pyro's MCMC runs on it unchanged. Compares the posterior mean with the amortised
guide's after a short training run.

    python examples/nuts_vae_posterior.py [--steps 300] [--samples 200]
"""
import argparse

import pyro
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from sklearn.datasets import load_digits

from guides import MeanFieldNormal, build_guide
from pyro_models import VAE, VAEConfig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args(argv)
    pyro.set_rng_seed(0)
    images = torch.tensor(load_digits().data >= 8, dtype=torch.float32)
    vae = VAE(VAEConfig(data_dim=64, latent_dim=4, decoder_hidden=(64,), encoder_hidden=(64,)))
    encoder, width = vae.make_encoder()
    guide = build_guide(MeanFieldNormal, vae.latent_sites, encoder=encoder, encoder_dim=width)
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    for _ in range(args.steps):
        svi.step(images[torch.randint(len(images), (100,))])
    vae.eval()
    x = images[:1]
    mcmc = MCMC(NUTS(vae.model), num_samples=args.samples, warmup_steps=args.samples, disable_progbar=True)
    mcmc.run(x)
    z = mcmc.get_samples()["z"].squeeze(1)
    with torch.no_grad():
        q_mean = guide.params(x)[0, :4]
    print(f"NUTS posterior mean {z.mean(0).numpy().round(2)}, sd {z.std(0).numpy().round(2)}")
    print(f"amortised guide mean {q_mean.numpy().round(2)}")


if __name__ == "__main__":
    main()
