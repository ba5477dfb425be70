"""The Monte Carlo errors the gap report states, checked against repeated estimates, and the
gap identities of the summary."""
import math

import torch

from inference.gap.estimates import Estimate, GapEstimates, summarise
from inference.importance import monte_carlo_variances


def test_delta_method_variance_of_a_log_mean_matches_repeated_estimates():
    torch.manual_seed(0)
    sigma = torch.tensor([0.3, 0.8, 1.2])  # log-weights N(0, sigma^2) for three "points"
    s, repeats = 400, 2000
    draws = torch.randn(repeats, s, 3) * sigma
    stated = torch.stack([Estimate.log_mean_exp(d, "").mc_var for d in draws]).mean(0)
    values = torch.logsumexp(draws, 1) - math.log(s)
    observed = values.double().var(0)
    assert torch.allclose(stated, observed, rtol=0.2), (stated, observed)
    truth = (sigma.double() ** 2).exp().sub(1) / s  # var(w / E w) / S for log-normal weights
    assert torch.allclose(stated, truth, rtol=0.2), (stated, truth)


def test_variance_of_a_sample_mean_matches_repeated_estimates():
    torch.manual_seed(1)
    draws = torch.randn(3000, 50, 2) * torch.tensor([1.0, 5.0]) + 3
    stated = torch.stack([monte_carlo_variances(d)[0] for d in draws]).mean(0)  # the ELBO's: var(log w) / S
    observed = draws.double().mean(1).var(0)
    assert torch.allclose(stated, observed, rtol=0.1)
    assert torch.allclose(stated, torch.tensor([1 / 50, 25 / 50], dtype=torch.float64), rtol=0.1)


def test_summary_gaps_add_up_exactly_and_carry_both_errors():
    torch.manual_seed(2)
    n = 7
    log_px = Estimate(torch.randn(n).double() - 90, torch.rand(n).double() * 0.1, "a")
    local = Estimate(log_px.value - torch.rand(n).double(), torch.rand(n).double() * 0.1, "b")
    amortised = Estimate(local.value - 3 * torch.rand(n).double(), torch.rand(n).double() * 0.1, "c")
    out = summarise(GapEstimates(log_px, amortised, local))
    total = out["approximation_gap"] + out["amortisation_gap"]
    assert math.isclose(total, out["log_px"] - out["elbo_amortised"], abs_tol=1e-9)
    assert math.isclose(total, out["inference_gap"], abs_tol=1e-9)
    expected = (log_px.mc_var + local.mc_var).sum().sqrt().item() / n
    assert math.isclose(out["approximation_gap_mc_se"], expected, rel_tol=1e-12)
    spread = (log_px.value - local.value).std().item() / math.sqrt(n)
    assert math.isclose(out["approximation_gap_point_se"], spread, rel_tol=1e-12)
    exact = Estimate.exact(log_px.value, "enumeration")
    assert summarise(GapEstimates(exact, exact, exact))["amortisation_gap_mc_se"] == 0.0


def test_summary_without_a_local_bound_reports_no_split():
    est = Estimate.exact(torch.tensor([-1.0, -2.0]), "x")
    out = summarise(GapEstimates(est, est, None))
    assert out["approximation_gap"] is None and out["amortisation_gap"] is None
    assert out["inference_gap"] == 0.0
