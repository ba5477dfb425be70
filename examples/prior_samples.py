#!/usr/bin/env python
"""Samples from the prior of every generative model with ``pyro.infer.Predictive``: call the
model without data and say how many points (``batch_size``). The LFM generates its words one
symbol at a time.

    python examples/prior_samples.py [--num-samples 2] [--batch-size 3]
"""
import argparse

import torch
from pyro.infer import Predictive

from pyro_models import MFCVAE, VAE, CompILE, LatentFactorModel, LFMConfig, LinearGaussian, MFCVAEConfig, VAEConfig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    models = {"vae": VAE(VAEConfig(data_dim=64)), "linear_gaussian": LinearGaussian(),
              "mfcvae": MFCVAE(MFCVAEConfig(data_dim=64, image_shape=(8, 8))),
              "lfm": LatentFactorModel(LFMConfig(vocab_size=30))}
    for name, model in models.items():
        model.eval()
        samples = Predictive(model.model, num_samples=args.num_samples)(batch_size=args.batch_size)
        print(f"{name}: " + ", ".join(f"{site} {tuple(value.shape)}" for site, value in samples.items()))
    compile_model = CompILE()  # CompILE is conditioned on each sequence's length
    lengths = torch.full((args.batch_size,), 8)
    samples = Predictive(compile_model.model, num_samples=args.num_samples)(lengths=lengths, relaxed=False)
    print(f"compile: tokens {tuple(samples['tokens'].shape)}, e.g. {samples['tokens'][0, 0].tolist()}")


if __name__ == "__main__":
    main()
