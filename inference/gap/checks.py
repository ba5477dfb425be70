"""A gap report's checks of itself: does each number agree with what the others imply?

log p(x) is the top of the decomposition, and every lower bound in the report (IWAE-K, L[q*],
L[q]) must sit below it. When one sits above it by more than twice the Monte Carlo standard
error of the difference, log p(x) is underestimated (AIS too short), so the approximation gap
is too small or even negative. The AIS convergence checks (the same AIS with twice the steps; a
BDMC bracket on data simulated from the model) must each stay within a tolerance and agree. And
q* must have stopped on its stopping rule, not on its step limit.

Each check is a dict ``{"status", "message", ...values}`` with status one of:
PASS, FAIL, INCONCLUSIVE (run, but too noisy to confirm convergence), NOT_RUN (it applies but
was not asked for), NOT_APPLICABLE. A report is converged when no check failed or was
inconclusive, and unknown (None) when a check that applies was not run.
"""
import math

from inference.importance import mc_se

from .estimates import Estimate, GapEstimates

PASS, FAIL, INCONCLUSIVE, NOT_RUN, NOT_APPLICABLE = "pass", "fail", "inconclusive", "not run", "not applicable"
EXACT_SLACK = 1e-6  # nats: float rounding where both sides are exact
LOWER_BOUNDS = (("iwae", "IWAE-K"), ("elbo_local", "L[q*]"), ("elbo_amortised", "L[q]"))


def _check(status: str, message: str = "", **values) -> dict:
    return {"status": status, "message": message, **values}


def _remedy(log_px: Estimate) -> str:
    if "AIS" in log_px.method:
        return "lengthen AIS (--ais-steps, AISSettings.num_steps)"
    return "log p(x) is underestimated by its estimator"


def bound_check(log_px: Estimate, bound: Estimate | None, label: str) -> dict:
    """log p(x) must sit above a lower bound: below it by more than 2 Monte Carlo s.e. of the
    difference fails; below it within the noise is inconclusive (a difference in the wrong
    direction confirms nothing), not a pass."""
    if bound is None:
        return _check(NOT_APPLICABLE, f"{label} not computed")
    diff = (log_px.value.double() - bound.value.double()).mean().item()
    se = mc_se(log_px.mc_var + bound.mc_var)
    if diff < -2 * se - EXACT_SLACK:
        gap = " (the approximation gap is negative)" if label == "L[q*]" else ""
        return _check(FAIL, f"log p(x) is {-diff:.3f} ± {se:.3f} nats below {label}{gap}: it is underestimated, "
                            f"so the approximation gap is too small; {_remedy(log_px)}", difference=diff, mc_se=se)
    if diff < -EXACT_SLACK:
        return _check(INCONCLUSIVE, f"log p(x) is {-diff:.3f} ± {se:.3f} nats below {label}: within the noise, but "
                                    f"in the wrong direction, so nothing confirms it is not underestimated; "
                                    f"{_remedy(log_px)}", difference=diff, mc_se=se)
    return _check(PASS, difference=diff, mc_se=se)


def exact_check(log_px: Estimate, exact, tolerance: float) -> dict:
    """Against a closed-form log p(x) per point: a stochastic lower bound may not sit above it by
    more than 2 s.e., nor below it by more than the tolerance."""
    if exact is None:
        return _check(NOT_APPLICABLE, "no closed-form log p(x)")
    diff = (log_px.value.double() - exact.double()).mean().item()
    se = mc_se(log_px.mc_var)
    values = {"difference": diff, "mc_se": se, "tolerance": tolerance}
    if diff > 2 * se + EXACT_SLACK:
        return _check(FAIL, f"log p(x) is {diff:.3f} ± {se:.3f} nats above the exact value: its estimator is not a "
                            "lower bound here (a bug; please report it)", **values)
    if diff < -tolerance - 2 * se:
        return _check(FAIL, f"log p(x) is {-diff:.3f} ± {se:.3f} nats below the exact value, beyond the "
                            f"{tolerance:g}-nat tolerance; {_remedy(log_px)}", **values)
    return _check(PASS, **values)


def tolerance_check(value: float, se: float, tolerance: float, what: str, remedy: str) -> dict:
    """|value| within ``tolerance``, decided with the noise in both directions: PASS when
    |value| + 2 s.e. is within it, FAIL when |value| - 2 s.e. is beyond it, else INCONCLUSIVE."""
    values = {"value": value, "mc_se": se, "tolerance": tolerance}
    if abs(value) - 2 * se > tolerance:
        return _check(FAIL, f"{what} {value:+.3f} ± {se:.3f} nats, beyond the {tolerance:g}-nat tolerance by more "
                            "than 2 s.e.: log p(x) has not converged; lengthen AIS (--ais-steps, "
                            "AISSettings.num_steps)", **values)
    if abs(value) + 2 * se > tolerance:
        return _check(INCONCLUSIVE, f"{what} {value:+.3f} ± {se:.3f} nats: within 2 s.e. of the {tolerance:g}-nat "
                                    f"tolerance, on either side, so it can be told neither within nor beyond it; "
                                    f"{remedy}", **values)
    return _check(PASS, **values)


# name: (details key, value key, the check, what the value is, its flag)
AIS_CONVERGENCE = {
    "ais_doubling": ("ais_convergence", "change", "the doubled-AIS check",
                     "AIS with twice the steps on {points} points moved log p(x) by", "--convergence-points"),
    "bdmc_bracket": ("bdmc_simulated", "width", "BDMC",
                     "BDMC on {points} points simulated from the model leaves a bracket of", "--bdmc-points"),
}


def noise_forecast(log_px: Estimate, points: int, chains: int, tolerance: float) -> dict:
    """The standard error an AIS convergence check on ``points`` points will have (two AIS runs
    differenced: the doubled run's, or BDMC's forward and reverse), forecast from the per-point
    Monte Carlo variance of the main run ``log_px`` on those points (the other run taken as
    equally noisy). A pass needs |change| + 2 s.e. within the tolerance, so where 2 s.e. alone
    exceeds it the check cannot pass however long AIS runs; then the points, or the chains
    (variance ~ 1/chains), that would bring the s.e. to a quarter of the tolerance."""
    variance = 2 * log_px.mc_var[:points].double().mean().item()  # of one point's difference
    se = math.sqrt(variance / points)
    target = tolerance / 4
    return {"points": points, "mc_se": se, "can_pass": 2 * se <= tolerance,
            "points_needed": math.ceil(variance / target ** 2),
            "chains_needed": math.ceil(chains * (se / target) ** 2)}


def forecast_line(name: str, forecast: dict, tolerance: float) -> str | None:
    """A stderr line when a forecast check cannot pass (None when it can)."""
    if forecast["can_pass"]:
        return None
    _, _, label, _, flag = AIS_CONVERGENCE[name]
    return (f"{label} cannot pass at this budget: on {forecast['points']} points its standard error will be about "
            f"{forecast['mc_se']:.3f} nats (forecast from the main AIS run's spread over its chains), and a pass "
            f"needs 2 s.e. within the {tolerance:g}-nat tolerance however long AIS runs; use {flag} "
            f"{forecast['points_needed']} or --ais-chains {forecast['chains_needed']}")

def ais_checks(details: dict, tolerance: float) -> dict:
    """The doubled-AIS check and the BDMC bracket, and whether they agree."""
    out = {}
    for name, (key, value, label, what, flag) in AIS_CONVERGENCE.items():
        measured = details.get(key)
        if measured is None:
            out[name] = _check(NOT_RUN, f"{label} was not run ({flag} N)")
        else:
            out[name] = tolerance_check(measured[value], measured[f"{value}_mc_se"], tolerance,
                                        what.format(points=measured["points"]),
                                        f"use more points ({flag}) or chains (--ais-chains)")
    statuses = {out["ais_doubling"]["status"], out["bdmc_bracket"]["status"]}
    if statuses == {PASS, FAIL}:
        believe = ("the BDMC bracket: a chain too short to converge can also be too short to move much when doubled"
                   if out["bdmc_bracket"]["status"] == FAIL else
                   "the doubling: it is measured on the real points, the bracket on simulated ones, which are easier")
        out["ais_checks_agree"] = _check(
            FAIL, f"the doubled-AIS check and the BDMC bracket disagree; believe {believe}")
    elif NOT_RUN in statuses:
        out["ais_checks_agree"] = _check(NOT_APPLICABLE, "needs both checks")
    else:
        out["ais_checks_agree"] = _check(PASS)
    return out


def local_check(estimates: GapEstimates) -> dict:
    if estimates.elbo_local is None:
        return _check(NOT_APPLICABLE, estimates.details.get("local_skipped", "q* not computed"))
    at_limit = estimates.local_at_limit
    if at_limit is None:
        return _check(NOT_APPLICABLE, "the estimator does not report how q* stopped")
    if at_limit > 0:
        return _check(FAIL, f"q* stopped at its step limit ({estimates.local_max_steps}) before its stopping rule on "
                            f"{at_limit} of {estimates.elbo_local.value.numel()} points: L[q*] may be short of the "
                            "optimum and the amortisation gap underestimated; raise --local-steps", points=at_limit)
    return _check(PASS)


def refinement_check(estimates: GapEstimates) -> dict:
    """A semi-amortised guide's refinement must not lower L[q] (a step size too large does: the
    outside check saw -5.21 -> -9.19) by more than 2 s.e. of the change."""
    if estimates.elbo_unrefined is None:
        return _check(NOT_APPLICABLE, "the guide is not refined")
    after, before = estimates.elbo_amortised, estimates.elbo_unrefined
    gain = (after.value.double() - before.value.double()).mean().item()
    se = mc_se(after.mc_var + before.mc_var)
    if gain < -2 * se:
        return _check(FAIL, f"refinement lowered L[q] by {-gain:.3f} ± {se:.3f} nats: its steps overshoot; use a "
                            "smaller --refine-lr (RefinedGuide's lr) or fewer steps", gain=gain, mc_se=se)
    return _check(PASS, gain=gain, mc_se=se)


def consistency_checks(estimates: GapEstimates, tolerance: float = 0.1, log_px_exact=None) -> dict:
    """Every check of a report, by name (see the module docstring); ``log_px_exact``: the
    closed-form log p(x) per point, where the model has one."""
    checks = {f"log_px_above_{key}": bound_check(estimates.log_px, getattr(estimates, key), label)
              for key, label in LOWER_BOUNDS}
    checks["log_px_vs_exact"] = exact_check(estimates.log_px, log_px_exact, tolerance)
    if "AIS" in estimates.log_px.method:
        checks.update(ais_checks(estimates.details, tolerance))
    checks["local_converged"] = local_check(estimates)
    checks["refinement_improves"] = refinement_check(estimates)
    return checks


def converged(checks: dict) -> bool | None:
    statuses = [check["status"] for check in checks.values()]
    if FAIL in statuses or INCONCLUSIVE in statuses:
        return False
    ais_run = [checks[name]["status"] for name in ("ais_doubling", "bdmc_bracket") if name in checks]
    if ais_run and all(status == NOT_RUN for status in ais_run):
        return None  # log p(x) by AIS whose convergence nothing measured
    return True


def check_lines(checks: dict) -> list[str]:
    """One line per check that did not pass (for stderr and warnings)."""
    return [f"check {name}: {check['status']}: {check['message']}" for name, check in checks.items()
            if check["status"] in (FAIL, INCONCLUSIVE, NOT_RUN)]
