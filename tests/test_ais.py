"""AIS and BDMC against the linear-Gaussian model's analytic log p(x)."""
import pyro
import pytest
import torch

from guides import MeanFieldNormal, build_guide
from inference import evaluate_importance
from inference.ais import AISSettings, LogJoint, ais, beta_schedule, simulate
from pyro_models import LinearGaussian, LinearGaussianConfig


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model_and_data():
    torch.manual_seed(1)
    model = LinearGaussian(LinearGaussianConfig(data_dim=6, latent_dim=3, noise_scale=0.3))
    with torch.no_grad():
        x = model.marginal().sample((40,))
    return model, x


def settings(steps, **kw):
    return AISSettings(num_steps=steps, num_chains=16, leapfrog_steps=5, **kw)


@pytest.mark.parametrize("kind", ["linear", "sigmoid"])
def test_schedules_run_from_zero_to_one(kind):
    betas = beta_schedule(50, kind)
    assert betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()


@pytest.mark.parametrize("kind", ["sigmoid", "linear"])
def test_ais_recovers_log_px_with_an_error_that_shrinks_with_more_steps(model_and_data, kind):
    model, x = model_and_data
    exact = model.log_marginal(x).detach()
    errors = []
    for steps in (5, 25, 125):
        result = ais(model.model, {"x": x}, settings(steps, schedule=kind))
        assert result.log_px.shape == (40,) and result.log_weights.shape == (16, 40)
        errors.append((result.log_px - exact).mean().abs().item())
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.15, errors
    assert 0.3 < result.accept_rate < 1.0


def test_bdmc_brackets_the_analytic_log_px_on_simulated_data(model_and_data):
    model, x = model_and_data
    latents, observed = simulate(model.model, {"x": x})
    assert observed["x"].shape == (1, 40, 6) and latents["z"].shape == (1, 40, 3)
    exact = model.log_marginal(observed["x"][0]).detach()
    lower = ais(model.model, {"x": x}, settings(40), observed=observed)
    upper = ais(model.model, {"x": x}, settings(40), observed=observed, start=latents)
    assert upper.direction == "reverse"
    assert lower.log_px.mean() < exact.mean() < upper.log_px.mean()
    assert upper.log_px.mean() - lower.log_px.mean() < 1.0


def test_ais_beats_iwae_on_average(model_and_data):
    model, x = model_and_data
    prior_guide = build_guide(MeanFieldNormal, model.latent_sites, num_points=x.shape[0])  # q = p(z)
    iwae = evaluate_importance(model.model, prior_guide, {"x": x, "idx": torch.arange(40)}, 16).iwae
    result = ais(model.model, {"x": x}, settings(50))
    assert result.log_px.mean() > iwae.mean()
    assert result.log_px.mean() < model.log_marginal(x).mean() + 0.05


def test_chunks_of_points_give_the_same_estimator(model_and_data):
    model, x = model_and_data
    exact = model.log_marginal(x).detach()
    chunked = ais(model.model, {"x": x}, AISSettings(num_steps=25, num_chains=16, leapfrog_steps=5, max_rows=16 * 7))
    assert chunked.log_px.shape == (40,)
    assert (chunked.log_px - exact).mean().abs() < 1.0


def test_discrete_latents_are_refused():
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            c = pyro.sample("c", pyro.distributions.Bernoulli(0.5 * torch.ones(x.shape[0], 2)).to_event(1))
            pyro.sample("x", pyro.distributions.Normal(c.sum(-1), 1.0), obs=x)

    with pytest.raises(ValueError, match="real-valued latents"):
        LogJoint(model, {"x": torch.zeros(3)}, 4)
