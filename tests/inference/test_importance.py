"""The importance-sampling evaluator against the linear-Gaussian model's analytic log p(x)."""
import math

import pyro
import pytest
import torch
from conftest import known_answer
from helpers import exact_posterior_guide

import inference.importance as importance
from guides import MeanFieldNormal, build_guide
from inference import evaluate_importance, log_weights, reduce_log_weights
from pyro_models import LinearGaussian


@pytest.fixture
def model_and_data():
    return known_answer(200)


@torch.no_grad()
def test_exact_posterior_gives_constant_log_weights_equal_to_log_px(model_and_data):
    model, x = model_and_data
    lw = log_weights(model.model, exact_posterior_guide(model), 50, x=x)
    assert lw.shape == (50, 200)
    torch.testing.assert_close(lw, model.log_marginal(x).expand(50, -1), atol=2e-4, rtol=0)
    result = evaluate_importance(model.model, exact_posterior_guide(model), {"x": x}, 100)
    torch.testing.assert_close(result.iwae, model.log_marginal(x), atol=2e-4, rtol=0)
    torch.testing.assert_close(result.ess, torch.full((200,), 100.0), atol=1e-2, rtol=0)


@torch.no_grad()
def test_poor_guide_bounds_are_ordered_and_iwae_increases_with_k(model_and_data):
    model, x = model_and_data
    guide = build_guide(MeanFieldNormal, model.latent_sites, num_points=x.shape[0])  # q = prior
    data = {"x": x, "idx": torch.arange(x.shape[0])}
    log_px = model.log_marginal(x).mean().item()
    bounds = {k: evaluate_importance(model.model, guide, data, k) for k in (1, 10, 100, 1000)}
    iwae = [bounds[k].iwae.mean().item() for k in (1, 10, 100, 1000)]
    elbo = bounds[1000].elbo.mean().item()
    assert iwae == sorted(iwae), iwae
    assert elbo < iwae[-1] < log_px
    assert abs(bounds[1].iwae.mean().item() - elbo) < 0.05 * abs(elbo)  # IWAE-1 is the ELBO
    assert log_px - iwae[-1] < 0.5 * (log_px - elbo)  # and K=1000 has closed most of the gap


def test_reduce_log_weights_matches_direct_formulas():
    lw = torch.randn(7, 3) * 5
    elbo, iwae, ess = reduce_log_weights(lw)
    w = lw.double().exp()
    torch.testing.assert_close(elbo, lw.mean(0))
    torch.testing.assert_close(iwae.double(), (w.mean(0)).log(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ess.double(), w.sum(0) ** 2 / (w ** 2).sum(0), rtol=1e-4, atol=1e-4)


def test_k5000_on_1000_points_is_chunked_to_the_row_budget(monkeypatch):
    """Every forward pass stays within max_rows (particles x points), whatever K and N."""
    model = LinearGaussian()
    x = torch.randn(1000, model.config.data_dim)
    guide = build_guide(MeanFieldNormal, model.latent_sites, num_points=1000)
    seen = []

    def recording(model_fn, guide_fn, num_particles, max_plate_nesting=1, **batch):
        seen.append(num_particles * batch["x"].shape[0])
        return log_weights(model_fn, guide_fn, num_particles, max_plate_nesting, **batch)

    monkeypatch.setattr(importance, "log_weights", recording)
    result = evaluate_importance(model.model, guide, {"x": x, "idx": torch.arange(1000)}, 5000, max_rows=50_000)
    assert result.iwae.shape == (1000,) and result.num_particles == 5000
    assert max(seen) <= 50_000 and sum(seen) == 5000 * 1000


def test_sites_outside_the_data_plate_are_refused():
    def model(x):
        pyro.sample("global", pyro.distributions.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("x", pyro.distributions.Normal(0.0, 1.0), obs=x)

    def guide(x):
        pyro.sample("global", pyro.distributions.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="outside the 'data' plate"):
        log_weights(model, guide, 3, x=torch.zeros(4))


def test_log_weights_ignore_poutine_scale(model_and_data):
    """Annealing factors are a training device; the estimate must be of the unscaled model."""
    model, x = model_and_data
    guide = exact_posterior_guide(model)
    scales = {"z": 0.1}
    with torch.no_grad():
        lw = log_weights(lambda **kw: model.model(**kw, latent_scales=scales), guide, 4, x=x)
    torch.testing.assert_close(lw[0], model.log_marginal(x), atol=2e-4, rtol=0)
    assert math.isfinite(lw.sum().item())


def test_timing_an_evaluation_pass_leaves_the_random_state_as_it_was(model_and_data):
    """The cost estimate printed before an evaluation times a pilot of it: the evaluation's numbers
    must not depend on whether it was timed."""
    from inference.throughput import seconds_per_point_pass

    model, x = model_and_data
    guide = build_guide(MeanFieldNormal, model.latent_sites, num_points=8)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    seconds = seconds_per_point_pass(model.model, guide, {"x": x[:8], "idx": torch.arange(8)}, particles=4)
    assert seconds > 0 and torch.equal(torch.get_rng_state(), before)
