"""``registered_once``: inside the runner's loop a module registers with Pyro's param store on its
first call only; outside it (a user's SVI loop) every call registers, as Pyro expects."""
import pyro
import torch
from pyro import poutine

from pyro_models import VAE, VAEConfig
from pyro_models.core import registered_once


def param_sites(vae, x):
    trace = poutine.trace(vae.model).get_trace(x=x)
    return [name for name, site in trace.nodes.items() if site["type"] == "param"]


def test_inside_the_block_a_module_registers_on_its_first_call_only():
    vae = VAE(VAEConfig(data_dim=8, latent_dim=2, decoder_hidden=(4,)))
    x = torch.bernoulli(torch.full((3, 8), 0.5))
    every_call = param_sites(vae, x)
    assert len(every_call) == 4  # two linear layers, weight and bias
    with registered_once():
        assert param_sites(vae, x) == every_call
        assert param_sites(vae, x) == []
        with registered_once():  # nested: the outer block's record holds
            assert param_sites(vae, x) == []
    assert param_sites(vae, x) == every_call  # after the block, as before it
    assert set(pyro.get_param_store().keys()) >= set(every_call)


def test_a_module_created_inside_the_block_registers_on_its_first_call():
    x = torch.bernoulli(torch.full((3, 8), 0.5))
    with registered_once():
        first = VAE(VAEConfig(data_dim=8, latent_dim=2, decoder_hidden=(4,)))
        second = VAE(VAEConfig(data_dim=8, latent_dim=2, decoder_hidden=(4,)))
        assert len(param_sites(first, x)) == 4 and len(param_sites(second, x)) == 4
        assert param_sites(first, x) == param_sites(second, x) == []
