"""A guide whose latent sites differ from the model's is refused wherever a bound is computed.

The outside check: the auxiliary-flow guide scored against the bare model (without
``with_auxiliary``) trained to a positive "ELBO" on binary data and an "IWAE" of +292.7 nats.
"""
import pyro
import pyro.distributions as dist
import pytest
import torch

from guides import auxiliary_reverse_for, build_guide, guide_family, with_auxiliary
from inference import ElboObjective, evaluate_importance, log_weights
from inference.ais import AISSettings
from inference.gap.report import GapSettings, gap_report
from inference.log_weights import SiteMismatch
from pyro_models import VAE, VAEConfig

AUX_FIX = "guide samples site 'aux_z', which the model does not have: .*guides.with_auxiliary\\(model, reverse\\)"


@pytest.fixture
def vae_with_auxiliary_guide():
    torch.manual_seed(0)
    model = VAE(VAEConfig(data_dim=64, latent_dim=4, decoder_hidden=(16,), encoder_hidden=(16,)))
    encoder, dim = model.make_encoder()
    guide = build_guide(guide_family("auxflow"), model.latent_sites, encoder=encoder, encoder_dim=dim)
    reverse = auxiliary_reverse_for(guide, *model.make_encoder())
    x = torch.bernoulli(torch.full((6, 64), 0.3))
    return model, guide, reverse, x


def test_the_unwrapped_auxiliary_guide_is_refused_everywhere(vae_with_auxiliary_guide):
    model, guide, _, x = vae_with_auxiliary_guide
    with pytest.raises(SiteMismatch, match=AUX_FIX):
        log_weights(model.model, guide, 3, x=x)
    with pytest.raises(SiteMismatch, match=AUX_FIX):
        evaluate_importance(model.model, guide, {"x": x}, 3)
    with pytest.raises(SiteMismatch, match=AUX_FIX):
        ElboObjective(pyro.infer.Trace_ELBO(), model.model, guide)({"x": x})
    with pytest.raises(SiteMismatch, match=AUX_FIX):
        gap_report(model.model, guide, {"x": x}, GapSettings(ais=AISSettings(num_steps=2), bdmc_points=0,
                                                            convergence_points=0, iwae_k=2, elbo_samples=2))


def test_the_wrapped_auxiliary_guide_is_scored(vae_with_auxiliary_guide):
    model, guide, reverse, x = vae_with_auxiliary_guide
    program = with_auxiliary(model.model, reverse)
    result = evaluate_importance(program, guide, {"x": x}, 5)
    assert (result.iwae < 0).all()
    loss = ElboObjective(pyro.infer.Trace_ELBO(), program, guide)({"x": x})
    assert loss > 0


def test_a_model_latent_the_guide_does_not_sample_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", dist.Normal(0.0, 1.0))
            b = pyro.sample("b", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(a + b, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("a", dist.Normal(0.0, 1.0))

    with pytest.raises(SiteMismatch, match="the model's latent site 'b' is not sampled by the guide"):
        log_weights(model, guide, 2, x=torch.zeros(3))
    with pytest.raises(SiteMismatch, match="'b'"):
        ElboObjective(pyro.infer.Trace_ELBO(), model, guide)({"x": torch.zeros(3)})


def test_a_guide_that_samples_an_observed_site_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(SiteMismatch, match="the guide samples site 'x', which the model observes"):
        log_weights(model, guide, 2, x=torch.zeros(3))
