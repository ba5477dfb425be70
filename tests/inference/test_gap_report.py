"""inference.gap.report on models with closed forms, and its checks on cases built to fail them."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

from conftest import known_answer, linear_ffg_guide

from guides import MeanFieldNormal, build_guide, guide_family
from inference.ais import AISSettings
from inference.bdmc import simulate
from inference.gap.checks import FAIL, INCONCLUSIVE, NOT_RUN, PASS, ais_checks, consistency_checks, converged
from inference.gap.estimates import Estimate, GapEstimates
from inference.gap.report import GapCheckWarning, GapSettings, gap_report
from inference.local_opt import LocalOptSettings
from pyro_models.mfcvae.model import MFCVAE, MFCVAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def fast(**overrides) -> GapSettings:
    settings = dict(ais=AISSettings(num_steps=300, leapfrog_steps=5), convergence_points=10, bdmc_points=10,
                    iwae_k=500, elbo_samples=1000, local=LocalOptSettings(max_steps=3000, tol=0.002))
    return GapSettings(**{**settings, **overrides})


@pytest.fixture(scope="module")
def linear_gaussian():
    """A linear-Gaussian model with a correlated posterior, 30 points from it, and an amortised
    diagonal-Gaussian guide near (not at) the best one: a linear encoder whose mean map is the
    posterior's, perturbed, and whose scales are 1.3 times the optimal ones."""
    model, x = known_answer(30, noise_scale=0.5, seed=0)
    with torch.no_grad():
        precision = model.posterior_precision()
        mean_map = torch.linalg.inv(precision) @ model.weight.T / model.log_noise.exp() ** 2  # mu = A (x - b)
        guide = linear_ffg_guide(model)
        head = guide.source.head
        head.weight.zero_()
        head.weight[:3] = mean_map + 0.1 * torch.randn(3, 6)
        head.bias[:3] = -mean_map @ model.bias
        head.bias[3:] = (torch.expm1(1.3 * torch.diagonal(precision).rsqrt() - MeanFieldNormal.min_scale)).log()
    return model, guide, x


def analytic_bounds(model, guide, x):
    with torch.no_grad():
        loc, raw = guide.params(x=x).split(3, dim=-1)
        elbo_q = model.diagonal_gaussian_elbo(x, loc, F.softplus(raw) + MeanFieldNormal.min_scale)
        elbo_star = model.diagonal_gaussian_elbo(x, *model.best_diagonal_gaussian(x))
        precision = model.posterior_precision()
        kl_star = 0.5 * (torch.diagonal(precision).log().sum() - torch.logdet(precision))
    return elbo_q, elbo_star, kl_star.item()


@pytest.mark.slow
def test_linear_gaussian_gaps_equal_their_closed_forms(linear_gaussian):
    model, guide, x = linear_gaussian
    elbo_q, elbo_star, kl_star = analytic_bounds(model, guide, x)
    assert 0.1 < kl_star and 0.1 < (elbo_star - elbo_q).mean() < 2  # both gaps are there to be measured
    torch.manual_seed(1)
    report = gap_report(model.model, guide, {"x": x}, fast(), log_px_exact=model.log_marginal(x).detach(), warn=False)
    # approximation gap = KL(q*_FFG || p(z | x)) = 1/2 (sum_i log L_ii - log det L)
    assert abs(report["approximation_gap"] - kl_star) < 3 * report["approximation_gap_mc_se"], (report, kl_star)
    # amortisation gap = L[q*] - L[q], both analytic
    analytic = (elbo_star - elbo_q).mean().item()
    assert abs(report["amortisation_gap"] - analytic) < 3 * report["amortisation_gap_mc_se"], (report, analytic)
    for key in ("log_px", "elbo_local", "elbo_amortised", "approximation_gap", "amortisation_gap"):
        assert 0 < report[f"{key}_mc_se"] < 0.05, key
    assert report["checks"]["log_px_vs_exact"]["status"] == PASS
    assert report["checks"]["local_converged"]["status"] == PASS
    for name in ("log_px_above_iwae", "log_px_above_elbo_local", "log_px_above_elbo_amortised"):
        assert report["checks"][name]["status"] == PASS, report["checks"][name]


def quadrature_log_px(model: MFCVAE, x: torch.Tensor, size: int = 300, half_width: float = 6.0) -> torch.Tensor:
    """log p(x) of an MFCVAE with two 1-d facets by a Riemann sum over a grid of (z0, z1)."""
    grid = torch.linspace(-half_width, half_width, size)
    z0, z1 = (z.reshape(-1, 1) for z in torch.meshgrid(grid, grid, indexing="ij"))
    with torch.no_grad():
        log_prior = model.facet_prior(0).log_prob(z0) + model.facet_prior(1).log_prob(z1)
        likelihood = dist.Bernoulli(logits=model.decoder([z0, z1], None))
        log_joint = torch.stack([log_prior + likelihood.log_prob(point).sum(-1) for point in x])
    return torch.logsumexp(log_joint.double(), -1) + 2 * math.log(grid[1] - grid[0])


def test_mfcvae_with_1d_facets_log_px_matches_quadrature():
    torch.manual_seed(0)
    config = MFCVAEConfig(data_dim=64, image_shape=(8, 8), latent_dims=(1, 1), clusters=(3, 3),
                          encoder_backbone=(32, 32), decoder_rungs=(32, 32), decoder_backbone=(32, 32),
                          initial_variance=0.1)
    model = MFCVAE(config)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3.0)  # a likelihood sharp enough that the posterior is not the prior
        _, observed = simulate(model.model, {"x": torch.zeros(20, 64)})
    x = observed["x"][0]
    exact = quadrature_log_px(model, x)
    assert (quadrature_log_px(model, x, size=150) - exact).abs().max() < 0.02  # the grid is fine enough
    encoder, dim = model.make_encoder()
    guide = build_guide(guide_family("ffg"), model.latent_sites, encoder=encoder, encoder_dim=dim)
    settings = fast(ais=AISSettings(num_steps=300, num_chains=64, leapfrog_steps=5), bdmc_points=0,
                    convergence_points=0, iwae_k=100, elbo_samples=100, local=LocalOptSettings(max_steps=100))
    torch.manual_seed(1)
    report = gap_report(model.model, guide, {"x": x}, settings, log_px_exact=exact, warn=False)
    error, se = report["log_px"] - report["log_px_exact"], report["log_px_mc_se"]
    assert error <= 2 * se, f"AIS {error:+.3f} ± {se:.3f} nats above the quadrature"
    assert error > -0.15 and se < 0.05, (error, se)
    assert report["checks"]["log_px_vs_exact"]["status"] == PASS


def statuses(report):
    return {name: check["status"] for name, check in report["checks"].items()}


def test_a_too_short_ais_and_a_capped_q_star_fail_their_checks(linear_gaussian, capsys):
    model, guide, x = linear_gaussian
    settings = fast(ais=AISSettings(num_steps=1, num_chains=2), local=LocalOptSettings(max_steps=1),
                    bdmc_points=20, convergence_points=20)
    with pytest.warns(GapCheckWarning) as warned:
        report = gap_report(model.model, guide, {"x": x}, settings, log_px_exact=model.log_marginal(x).detach())
    got = statuses(report)
    for name in ("log_px_above_iwae", "log_px_above_elbo_local", "log_px_vs_exact", "ais_doubling",
                 "bdmc_bracket", "local_converged"):
        assert got[name] == FAIL, (name, report["checks"][name])
    assert report["converged"] is False
    assert report["approximation_gap"] is not None and math.isfinite(report["log_px"])  # numbers kept
    failing = [name for name, status in got.items() if status == FAIL]
    assert len(warned) == len(failing) and all("\n" not in str(w.message) for w in warned)
    assert "raise --local-steps" in report["checks"]["local_converged"]["message"]
    assert "--ais-steps" in report["checks"]["log_px_above_iwae"]["message"]


def test_log_px_below_q_star_fails_even_when_everything_else_looks_fine():
    """The MFCVAE report of the outside check: log p(x) 0.21 below L[q*], doubling moved +0.009."""
    n = 50
    log_px = Estimate(torch.full((n,), -100.0, dtype=torch.float64), torch.full((n,), 1e-4), "AIS: 300 steps")
    local = Estimate(torch.full((n,), -99.79, dtype=torch.float64), torch.full((n,), 1e-4), "q*")
    amortised = Estimate(torch.full((n,), -101.0, dtype=torch.float64), torch.full((n,), 1e-4), "q")
    details = {"ais_convergence": {"points": 25, "change": 0.009, "change_mc_se": 0.01},
               "bdmc_simulated": {"points": 25, "width": 0.93, "width_mc_se": 0.05}}
    estimates = GapEstimates(log_px, amortised, local, details=details, local_at_limit=0, local_max_steps=100)
    checks = consistency_checks(estimates)
    assert checks["log_px_above_elbo_local"]["status"] == FAIL
    assert "approximation gap is negative" in checks["log_px_above_elbo_local"]["message"]
    assert checks["ais_doubling"]["status"] == PASS and checks["bdmc_bracket"]["status"] == FAIL
    agree = checks["ais_checks_agree"]
    assert agree["status"] == FAIL and "believe the BDMC bracket" in agree["message"]
    assert converged(checks) is False


def test_convergence_checks_that_are_noisy_or_not_run_do_not_pass_as_converged():
    noisy = ais_checks({"ais_convergence": {"points": 3, "change": 0.02, "change_mc_se": 0.2}}, tolerance=0.1)
    assert noisy["ais_doubling"]["status"] == INCONCLUSIVE and noisy["bdmc_bracket"]["status"] == NOT_RUN
    assert converged(noisy) is False
    assert converged(ais_checks({}, tolerance=0.1)) is None  # nothing measured AIS's convergence
    assert converged(ais_checks({"ais_convergence": {"points": 30, "change": 0.02, "change_mc_se": 0.01}}, 0.1))


def test_an_estimate_above_the_exact_log_px_fails():
    n = 10
    exact = torch.zeros(n)
    log_px = Estimate(torch.full((n,), 0.1, dtype=torch.float64), torch.full((n,), 1e-4), "AIS")
    amortised = Estimate(torch.full((n,), -1.0, dtype=torch.float64), torch.full((n,), 1e-4), "q")
    checks = consistency_checks(GapEstimates(log_px, amortised, None), log_px_exact=exact)
    assert checks["log_px_vs_exact"]["status"] == FAIL and "not a lower bound" in checks["log_px_vs_exact"]["message"]


def test_a_users_own_guide_gets_a_report_without_q_star_and_says_why(linear_gaussian):
    model, _, x = linear_gaussian

    def my_guide(x):
        loc = pyro.param("my_loc", torch.zeros(x.shape[0], 3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    settings = fast(ais=AISSettings(num_steps=50, leapfrog_steps=3), bdmc_points=0, convergence_points=5,
                    iwae_k=50, elbo_samples=50)
    with pytest.warns(GapCheckWarning, match="q\\* skipped: q\\* needs a guide from guides.build_guide"):
        report = gap_report(model.model, my_guide, {"x": x}, settings)
    assert report["elbo_local"] is None and report["amortisation_gap"] is None and report["approximation_gap"] is None
    assert report["inference_gap"] > 0 and report["checks"]["local_converged"]["status"] == "not applicable"
