"""Models are plain Pyro programs: trace, Predictive, and any ELBO with a guide from elsewhere."""
import subprocess
import sys

import pyro
import pyro.distributions as dist
import torch
from conftest import ROOT
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO

from guides import MeanFieldNormal, build_guide
from pyro_models import VAE, VAEConfig


def test_vae_trace_shapes():
    vae = VAE(VAEConfig(data_dim=64))
    x = torch.bernoulli(torch.full((5, 64), 0.3))
    trace = poutine.trace(vae.model).get_trace(x=x)
    assert trace.nodes["z"]["value"].shape == (5, 50)
    assert trace.nodes["x"]["is_observed"] and trace.nodes["x"]["fn"].batch_shape == (5,)
    trace.compute_log_prob()
    assert trace.nodes["x"]["log_prob"].shape == (5,)


def test_vae_predictive_with_library_guide():
    vae = VAE(VAEConfig(data_dim=64))
    encoder, dim = vae.make_encoder()
    guide = build_guide(MeanFieldNormal, vae.latent_sites, encoder=encoder, encoder_dim=dim)
    x = torch.bernoulli(torch.full((5, 64), 0.3))
    samples = Predictive(vae.model, guide=guide, num_samples=3, return_sites=["z", "x"])(x=x)
    assert samples["z"].shape == (3, 5, 50)
    prior = Predictive(vae.model, num_samples=2, return_sites=["z"])(x=x)
    assert prior["z"].shape == (2, 5, 50)


def handwritten_guide(x, idx=None, latent_scales=None):
    """A guide written without the library: free loc/scale shared by all points."""
    loc = pyro.param("loc", torch.zeros(50))
    scale = pyro.param("scale", torch.ones(50), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0], dim=-1):
        pyro.sample("z", dist.Normal(loc, scale).expand([x.shape[0], 50]).to_event(1))


def test_vae_trains_with_a_guide_from_another_module():
    vae = VAE(VAEConfig(data_dim=64))
    x = torch.bernoulli(torch.full((20, 64), 0.3))
    svi = SVI(vae.model, handwritten_guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x=x) for _ in range(30)]
    assert sum(losses[-5:]) < sum(losses[:5])


def test_models_import_without_torchvision_or_torchaudio():
    code = ("import sys, pyro_models, guides, inference, lvm_app.registry; "
            "assert not {'torchvision', 'torchaudio'} & set(sys.modules), 'imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
