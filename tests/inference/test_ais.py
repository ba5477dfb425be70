"""AIS and BDMC against exact log p(x), in the direction they can fail.

AIS promises E[w] = p(x), so log p(x) estimates sit *below* the truth on average (Jensen), and
reverse AIS from exact posterior samples sits above it. Each bias test runs R independent
replicates side by side and asks that the mean error be <= 0 within 2 standard errors of that
mean over the replicates: a chain whose step size follows its own acceptances (the design
these tests replaced) sat +0.07 nats above on the first one.
"""
import math

import pyro
import pytest
import torch
from conftest import known_answer

from guides import MeanFieldNormal, build_guide
from inference import evaluate_importance
from inference.ais import AISSettings, LogJoint, ais, beta_schedule
from inference.bdmc import bdmc, simulate
from pyro_models.ppca import ReplicatedPPCA

pytestmark = pytest.mark.usefixtures("one_thread")
REPLICATES = 8


def bias(per_replicate: torch.Tensor) -> tuple[float, float]:
    """Mean over replicates and its standard error."""
    return per_replicate.mean().item(), (per_replicate.std() / math.sqrt(per_replicate.numel())).item()


def assert_not_above(errors: torch.Tensor, what: str):
    mean, se = bias(errors)
    assert mean <= 2 * se, f"{what}: AIS sits {mean:+.4f} ± {se:.4f} nats above the exact log p(x)"
    return mean, se


@pytest.fixture(scope="module")
def ppca():
    """The outside check's model: x in R^5, z in R^2, W, b ~ N(0, 1), noise 0.5, 20 points per replicate."""
    return ReplicatedPPCA(REPLICATES, 20, data_dim=5, latent_dim=2, noise=0.5, seed=0)


@pytest.mark.parametrize("kind", ["linear", "sigmoid"])
def test_schedules_run_from_zero_to_one(kind):
    betas = beta_schedule(50, kind)
    assert betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()


@pytest.mark.slow
def test_ais_on_probabilistic_pca_is_not_above_the_exact_log_px_and_improves_with_length(ppca):
    exact = ppca.log_marginal()
    torch.manual_seed(0)
    default = ais(ppca.model, ppca.batch(), AISSettings())
    long_mean, long_se = assert_not_above(ppca.per_replicate(default.log_px - exact), "default settings")
    short = ais(ppca.model, ppca.batch(), AISSettings(num_steps=10))
    short_mean, short_se = assert_not_above(ppca.per_replicate(short.log_px - exact), "10 steps")
    assert short_mean < long_mean - 2 * math.hypot(short_se, long_se), (short_mean, long_mean)
    assert abs(long_mean) < 0.03, long_mean
    assert default.log_weights.shape == (16, ppca.x.shape[0]) and 0.6 < default.accept_rate < 0.95


def test_ais_on_the_linear_gaussian_model_over_replicates():
    model, x = known_answer(20)
    x = x.repeat(REPLICATES, 1)  # 8 independent AIS runs of 20 points
    with torch.no_grad():
        exact = model.log_marginal(x)
    errors = {}
    for steps in (10, 300):
        result = ais(model.model, {"x": x}, AISSettings(num_steps=steps, leapfrog_steps=5))
        errors[steps] = (result.log_px - exact).double().reshape(REPLICATES, 20).mean(1)
        assert_not_above(errors[steps], f"{steps} steps")
    assert errors[10].mean() < errors[300].mean() - 0.05


def test_bdmc_brackets_the_exact_log_px_of_simulated_data(ppca):
    torch.manual_seed(2)
    settings = AISSettings(num_steps=100, leapfrog_steps=5)
    latents, observed = simulate(ppca.model, ppca.batch())
    exact = ppca.log_marginal(**ppca.batch(x=observed["x"][0]))
    lower = ais(ppca.model, ppca.batch(), settings, observed=observed)
    upper = ais(ppca.model, ppca.batch(), settings, observed=observed, start=latents, step_sizes=lower.step_sizes)
    assert upper.direction == "reverse" and upper.pilot_row_evals == 0  # the forward pilot's schedule, reused
    assert_not_above(ppca.per_replicate(lower.log_px - exact), "forward AIS")
    above, se = bias(ppca.per_replicate(upper.log_px - exact))
    assert above >= -2 * se, f"reverse AIS sits {above:+.4f} ± {se:.4f} nats below the exact log p(x)"
    report = bdmc(ppca.model, ppca.batch(slice(40)), settings)
    assert report["points"] == 40 and -3 * report["width_mc_se"] < report["width"] < 0.5


def test_ais_on_a_correlated_10d_posterior_is_unbiased_in_the_weights():
    """What AIS promises is E[w] = p(x): the mean of w / p(x) over every chain is 1."""
    model = ReplicatedPPCA(REPLICATES, 10, data_dim=20, latent_dim=10, noise=1.0, seed=3)
    precision = torch.eye(10) + model.weight[0].T @ model.weight[0]
    eigenvalues = torch.linalg.eigvalsh(precision)
    assert eigenvalues.max() / eigenvalues.min() > 5  # a correlated, ill-conditioned posterior
    exact = model.log_marginal()
    torch.manual_seed(3)
    result = ais(model.model, model.batch(), AISSettings(num_steps=300, num_chains=32, leapfrog_steps=5))
    assert_not_above(model.per_replicate(result.log_px - exact), "10-d latent")
    ratio = (result.log_weights.double() - exact.double()).exp()
    mean, se = ratio.mean().item(), (ratio.std() / math.sqrt(ratio.numel())).item()
    assert abs(mean - 1) < 3 * se and se < 0.05, (mean, se)


def test_given_step_sizes_are_used_and_checked(ppca):
    batch = ppca.batch(slice(10))
    first = ais(ppca.model, batch, AISSettings(num_steps=20, leapfrog_steps=3))
    assert first.step_sizes.shape == (21, 10) and (first.step_sizes > 0).all() and first.pilot_row_evals > 0
    again = ais(ppca.model, batch, AISSettings(num_steps=20, leapfrog_steps=3), step_sizes=first.step_sizes)
    assert torch.equal(again.step_sizes, first.step_sizes) and again.pilot_row_evals == 0
    with pytest.raises(ValueError, match="step_sizes must have shape"):
        ais(ppca.model, batch, AISSettings(num_steps=30), step_sizes=first.step_sizes)


@pytest.mark.parametrize("field, value", [("num_steps", 0), ("target_accept", 1.0), ("step_jitter", 1.0),
                                          ("initial_step_size", math.nan), ("pilot_chains", 0)])
def test_bad_settings_are_refused(ppca, field, value):
    with pytest.raises(ValueError, match=field):
        ais(ppca.model, ppca.batch(slice(2)), AISSettings(**{field: value}))


def test_chunks_of_points_give_the_same_estimator(ppca):
    exact = ppca.log_marginal()[:40]
    chunked = ais(ppca.model, ppca.batch(slice(40)), AISSettings(num_steps=50, leapfrog_steps=5, max_rows=16 * 7))
    assert chunked.log_px.shape == (40,) and chunked.step_sizes.shape == (51, 40)
    assert -0.5 < (chunked.log_px - exact).mean() < 0.05


def test_ais_beats_iwae_with_the_prior_as_proposal():
    model, x = known_answer(40)
    prior_guide = build_guide(MeanFieldNormal, model.latent_sites, num_points=x.shape[0])  # q = p(z)
    iwae = evaluate_importance(model.model, prior_guide, {"x": x, "idx": torch.arange(40)}, 16).iwae
    result = ais(model.model, {"x": x}, AISSettings(num_steps=50, leapfrog_steps=5))
    assert result.log_px.mean() > iwae.mean() + 1.0


def test_discrete_latents_are_refused():
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            c = pyro.sample("c", pyro.distributions.Bernoulli(0.5 * torch.ones(x.shape[0], 2)).to_event(1))
            pyro.sample("x", pyro.distributions.Normal(c.sum(-1), 1.0), obs=x)

    with pytest.raises(ValueError, match="real-valued latents"):
        LogJoint(model, {"x": torch.zeros(3)}, 4)
