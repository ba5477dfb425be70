"""inference.gap.report on models with closed forms, and its checks on cases built to fail them."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from conftest import known_answer, linear_ffg_guide
from helpers import quadrature_log_px, two_facet_1d_mfcvae

from guides import MeanFieldNormal, build_guide, guide_family
from inference.ais import AISSettings
from inference.bdmc import simulate
from inference.gap.checks import (
    FAIL,
    INCONCLUSIVE,
    NOT_RUN,
    PASS,
    ais_checks,
    consistency_checks,
    converged,
    forecast_line,
    noise_forecast,
)
from inference.gap.estimates import Estimate, GapEstimates, summarise
from inference.gap.report import GapCheckWarning, GapSettings, gap_report
from inference.local_opt import LocalOptSettings

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
        check = report["checks"][name]  # AIS above each bound; where the guide is near the posterior, IWAE-K is
        expected = PASS if check["difference"] >= 0 else INCONCLUSIVE  # within the noise of log p(x): either way
        assert check["status"] == expected and check["difference"] > -2 * check["mc_se"], check


def test_mfcvae_with_1d_facets_log_px_matches_quadrature():
    model = two_facet_1d_mfcvae(initial_variance=0.1)
    with torch.no_grad():
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
    forecasts = [str(w.message) for w in warned if "cannot pass at this budget" in str(w.message)]
    assert len(forecasts) == 2 and all(not f["can_pass"] for f in report["check_noise_forecast"].values())
    assert "--convergence-points" in forecasts[0] and "--bdmc-points" in forecasts[1]  # said before their runs
    assert len(warned) == len(failing) + 2 and all("\n" not in str(w.message) for w in warned)
    assert "raise --local-steps" in report["checks"]["local_converged"]["message"]
    assert "--ais-steps" in report["checks"]["log_px_above_iwae"]["message"]


def test_the_noise_forecast_says_when_a_check_cannot_pass_and_what_budget_could():
    """At 8 chains x 25 points the doubling check's s.e. was 0.11-0.15 nats: 2 s.e. beyond the
    0.1 tolerance whatever the steps. The forecast (from the main run's per-point variance) says so
    and names a budget that brings the s.e. to a quarter of the tolerance."""
    per_point_var = 0.15 ** 2 * 25 / 2  # gives an s.e. of 0.15 on 25 points
    log_px = Estimate(torch.zeros(100, dtype=torch.float64), torch.full((100,), per_point_var), "AIS")
    forecast = noise_forecast(log_px, points=25, chains=8, tolerance=0.1)
    assert forecast["mc_se"] == pytest.approx(0.15) and not forecast["can_pass"]
    assert math.sqrt(2 * per_point_var / forecast["points_needed"]) <= 0.025 + 1e-12
    assert math.sqrt(2 * per_point_var * 8 / forecast["chains_needed"] / 25) <= 0.025 + 1e-12
    line = forecast_line("ais_doubling", forecast, 0.1)
    assert "cannot pass" in line and f"--convergence-points {forecast['points_needed']}" in line
    quiet = Estimate(torch.zeros(100, dtype=torch.float64), torch.full((100,), 1e-4), "AIS")
    assert noise_forecast(quiet, 25, 8, 0.1)["can_pass"] and forecast_line("bdmc_bracket", noise_forecast(
        quiet, 25, 8, 0.1), 0.1) is None


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


def estimates_with(log_px: float, iwae: float, n: int = 25, var: float = 0.25):
    def est(value, method):
        return Estimate(torch.full((n,), value, dtype=torch.float64), torch.full((n,), var), method)

    return GapEstimates(est(log_px, "AIS: 300 steps"), est(iwae - 5, "q"), est(iwae - 1, "q*"), iwae=est(iwae, "IWAE"))


def test_log_px_below_iwae_within_the_noise_is_inconclusive_and_the_gaps_come_from_iwae():
    """The outside check: AIS 0.15 nats below IWAE-1000 (1.5 s.e.) passed, and the approximation gap
    was reported as 0.15 where IWAE-K - L[q*] = 0.30 already bounds it from below."""
    estimates = estimates_with(log_px=-100.15, iwae=-100.0)  # s.e. of the difference: sqrt(25 * 0.5) / 25 = 0.14
    checks = consistency_checks(estimates)
    assert checks["log_px_above_iwae"]["status"] == INCONCLUSIVE and "wrong direction" in checks["log_px_above_iwae"]["message"]
    assert converged(checks) is False
    summary = summarise(estimates)
    assert summary["gaps_from"] == "iwae" and summary["approximation_gap"] == pytest.approx(1.0)
    assert summarise(estimates_with(log_px=-99.5, iwae=-100.0))["gaps_from"] == "log_px"


def test_a_convergence_check_is_decided_with_the_noise_in_both_directions():
    def doubling(change, se):
        return ais_checks({"ais_convergence": {"points": 25, "change": change, "change_mc_se": se}}, 0.1)["ais_doubling"]

    assert doubling(0.115, 0.086)["status"] == INCONCLUSIVE  # beyond the tolerance, but not beyond the noise: was FAIL
    assert doubling(0.35, 0.05)["status"] == FAIL and "by more than 2 s.e." in doubling(0.35, 0.05)["message"]
    assert doubling(0.02, 0.01)["status"] == PASS and doubling(0.02, 0.06)["status"] == INCONCLUSIVE


def test_a_refinement_that_lowers_l_q_fails_its_check():
    n = 20
    est = lambda value: Estimate(torch.full((n,), value, dtype=torch.float64), torch.full((n,), 0.01), "x")  # noqa: E731
    lowered = GapEstimates(est(-90.0), est(-9.19), est(-5.0), elbo_unrefined=est(-5.21))
    check = consistency_checks(lowered)["refinement_improves"]
    assert check["status"] == FAIL and "smaller --refine-lr" in check["message"]
    raised = GapEstimates(est(-90.0), est(-5.0), est(-4.9), elbo_unrefined=est(-5.21))
    assert consistency_checks(raised)["refinement_improves"]["status"] == PASS


def test_gap_md_says_not_confirmed_when_no_check_failed():
    from lvm_app.gap_markdown import checks_markdown

    inconclusive = {"converged": False, "checks": {"ais_doubling": {"status": INCONCLUSIVE, "message": "noisy"},
                                                   "bdmc_bracket": {"status": PASS, "message": ""}}}
    assert "NOT CONFIRMED" in checks_markdown(inconclusive) and "a check failed" not in checks_markdown(inconclusive)
    failed = {"converged": False, "checks": {"ais_doubling": {"status": FAIL, "message": "moved"}}}
    assert "NOT CONVERGED**: a check failed" in checks_markdown(failed)
