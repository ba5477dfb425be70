"""One step's ELBO gradient against the closed-form ELBO of the linear-Gaussian model."""
import math

import pyro
import torch

from guides import MeanFieldNormal, build_guide
from inference import ElboObjective
from pyro_models import LinearGaussian, LinearGaussianConfig


def analytic_elbo(model: LinearGaussian, x, loc, scale):
    """E_q[log p(x, z)] + H[q] for q = N(loc, diag(scale^2)), summed over data points."""
    w, b, noise = model.weight, model.bias, model.log_noise.exp()
    big_d, d = x.shape[1], loc.shape[1]
    residual = x - loc @ w.T - b
    trace_term = (scale ** 2) @ (w ** 2).sum(0)
    expected_lik = -0.5 * big_d * math.log(2 * math.pi) - big_d * torch.log(noise) \
        - 0.5 * ((residual ** 2).sum(1) + trace_term) / noise ** 2
    expected_prior = -0.5 * d * math.log(2 * math.pi) - 0.5 * ((loc ** 2).sum(1) + (scale ** 2).sum(1))
    entropy = torch.log(scale).sum(1) + 0.5 * d * (1 + math.log(2 * math.pi))
    return (expected_lik + expected_prior + entropy).sum()


def test_elbo_gradient_matches_closed_form():
    torch.manual_seed(0)
    model = LinearGaussian(LinearGaussianConfig(data_dim=5, latent_dim=2, noise_scale=0.7))
    x = torch.randn(8, 5)
    guide = build_guide(MeanFieldNormal, model.latent_sites, num_points=8)
    with torch.no_grad():
        guide.source.table.normal_(0, 0.5)
    params = [model.weight, model.bias, model.log_noise, guide.source.table]
    batch = {"x": x, "idx": torch.arange(8)}

    elbo = pyro.infer.Trace_ELBO(num_particles=20000, vectorize_particles=True, max_plate_nesting=1)
    ElboObjective(elbo, model.model, guide)(batch)
    estimated = [p.grad.clone() for p in params]

    for p in params:
        p.grad = None
    dist = guide.families[0].distribution(guide.source.table)
    loss = -analytic_elbo(model, x, dist.base_dist.loc, dist.base_dist.scale) / 8  # per data point
    loss.backward()
    for name, est, p in zip(["W", "b", "log_noise", "guide table"], estimated, params):
        torch.testing.assert_close(est, p.grad, atol=0.03 * p.grad.abs().max().item() + 1e-3, rtol=0.05,
                                   msg=lambda m, name=name: f"{name}: {m}")
