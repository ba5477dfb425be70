"""A KL weight of 0 removes the site's log-densities from the ELBO on both sides, exactly."""
import pyro
import pyro.distributions as dist
import torch

from pyro_models.core import latent_scale


def model(x, latent_scales=None):
    with pyro.plate("data", x.shape[0], dim=-1):
        with latent_scale("z", latent_scales):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x, latent_scales=None):
    loc = pyro.param("loc", torch.zeros(x.shape[0]))
    with pyro.plate("data", x.shape[0], dim=-1):
        with latent_scale("z", latent_scales):
            pyro.sample("z", dist.Normal(loc, 0.5))


def test_zero_weight_leaves_only_the_likelihood(fresh_pyro):
    x = torch.tensor([0.3, -1.2])
    pyro.set_rng_seed(0)
    trace = pyro.poutine.trace(guide).get_trace(x, latent_scales={"z": 0.0})
    replayed = pyro.poutine.trace(pyro.poutine.replay(model, trace=trace)).get_trace(x, latent_scales={"z": 0.0})
    trace.compute_log_prob()
    replayed.compute_log_prob()
    z = trace.nodes["z"]["value"]
    expected = dist.Normal(z, 1.0).log_prob(x).sum()
    total = replayed.log_prob_sum() - trace.log_prob_sum()
    assert torch.allclose(total, expected)
    assert trace.log_prob_sum() == 0


def test_positive_weight_scales_the_kl_terms(fresh_pyro):
    x = torch.tensor([0.3])
    pyro.set_rng_seed(0)
    trace = pyro.poutine.trace(guide).get_trace(x, latent_scales={"z": 0.25})
    trace.compute_log_prob()
    z = trace.nodes["z"]["value"]
    assert torch.allclose(trace.log_prob_sum(), 0.25 * dist.Normal(0.0, 0.5).log_prob(z).sum())
