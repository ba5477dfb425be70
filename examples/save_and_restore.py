#!/usr/bin/env python
"""Save a library model the Pyro way and restore it in a fresh program: train the VAE on
scikit-learn's 8x8 digits, save Pyro's param store, then re-create the model and guide under
the same names, load the store, and check that the restored pair scores held-out digits as the
trained one did. A copy (``copy.deepcopy``) takes a name of its own, so it trains apart.

    python examples/save_and_restore.py [--steps 300] [--out params.pt]
"""
import argparse
import copy
import gc
import tempfile
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from sklearn.datasets import load_digits

from guides import MeanFieldNormal, build_guide
from pyro_models import VAE, VAEConfig

CONFIG = VAEConfig(data_dim=64, latent_dim=8, decoder_hidden=(128,), encoder_hidden=(128,))


def build(names=(None, None)):
    """The model and its amortised guide; ``names`` fixes the names they register under."""
    vae = VAE(CONFIG, name=names[0])
    encoder, width = vae.make_encoder()
    guide = build_guide(MeanFieldNormal, vae.latent_sites, encoder=encoder, encoder_dim=width, name=names[1])
    return vae, guide


def held_out_elbo(vae, guide, digits) -> float:
    """-ELBO per digit with a fixed seed, so two equal models give equal figures."""
    pyro.set_rng_seed(1)
    with torch.no_grad():
        return Trace_ELBO(num_particles=10).loss(vae.model, guide, digits) / len(digits)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None,
                        help="where to save the param store (default: a temporary directory)")
    args = parser.parse_args(argv)
    pyro.set_rng_seed(0)
    images = torch.tensor(load_digits().data >= 8, dtype=torch.float32)
    train, test = images[:1500], images[1500:]
    vae, guide = build(("digits_vae", "digits_guide"))
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for _ in range(args.steps):
        svi.step(train[torch.randint(len(train), (100,))])
    trained = held_out_elbo(vae, guide, test)

    twin = copy.deepcopy(vae)  # its own name: its parameters are not the original's
    print(f"trained {vae.name!r}; a copy registers as {twin.name!r}")
    with tempfile.TemporaryDirectory() as scratch:
        path = args.out or Path(scratch) / "params.pt"
        pyro.get_param_store().save(path)
        del vae, guide, svi, twin  # as if the program ended
        gc.collect()

        pyro.clear_param_store()  # a fresh program: load the store, re-create under the same names
        pyro.get_param_store().load(path)
        vae, guide = build(("digits_vae", "digits_guide"))
        restored = held_out_elbo(vae, guide, test)  # the first model call takes the store's values
    print(f"held-out -ELBO per digit: trained {trained:.3f}, restored {restored:.3f}")
    if abs(trained - restored) > 1e-4:
        raise SystemExit("the restored model does not score as the trained one did")


if __name__ == "__main__":
    main()
