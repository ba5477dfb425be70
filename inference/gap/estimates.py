"""The three quantities of an inference-gap report, per data point, with their Monte Carlo error.

    log p(x) - L[q] = (log p(x) - L[q*]) + (L[q*] - L[q])
                      approximation gap    amortisation gap

Every estimate carries, per point, the variance of the estimator *given that point and the
model* (0 where the value is exact, e.g. by enumeration). The report's Monte Carlo standard
error of a mean over N points is sqrt(sum_i var_i) / N; the three estimates use independent
random draws, so the variance of a per-point gap is the sum of its two terms' variances. The
spread over points (which points were drawn) is a different error and is reported separately.

A model whose latents are not all continuous provides its own estimates (a ``GapEstimates``, e.g.
by enumerating a discrete latent space: pyro_models/lfm/gap.py, pyro_models/compile/gap.py); the
continuous models use AIS and local optimisation (inference/gap/report.py). inference/gap/checks.py
checks a report against itself.
"""
import math
from dataclasses import dataclass, field

import torch

from inference.importance import mc_se, monte_carlo_variances, point_se


@dataclass
class Estimate:
    value: torch.Tensor  # (N,) one estimate per data point
    mc_var: torch.Tensor  # (N,) Monte Carlo variance of each point's estimate (zeros when exact)
    method: str  # how it was computed, one line for the report

    def __post_init__(self):  # on the CPU whatever device computed them: a report combines estimates from several
        self.value, self.mc_var = self.value.cpu(), self.mc_var.cpu()

    @classmethod
    def exact(cls, value: torch.Tensor, method: str) -> "Estimate":
        return cls(value.detach().double(), torch.zeros_like(value, dtype=torch.float64), method)

    @classmethod
    def log_mean_exp(cls, log_weights: torch.Tensor, method: str) -> "Estimate":
        """log of the mean over dim 0 of (S, N) importance weights (IWAE, IS, AIS over chains), with
        the delta-method variance var(w / mean w) / S: the error of the log of a mean of weights."""
        log_weights = log_weights.detach().double()
        _, var = monte_carlo_variances(log_weights)
        return cls(torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0]), var, method)

    def mean(self) -> float:
        return self.value.double().mean().item()

    def mc_se(self) -> float:
        return mc_se(self.mc_var)

    def point_se(self) -> float:
        return point_se(self.value)


@dataclass
class GapEstimates:
    log_px: Estimate
    elbo_amortised: Estimate  # L[q]: the amortised guide
    elbo_local: Estimate | None  # L[q*]: the best member of the same family per point (None: not computed)
    iwae: Estimate | None = None  # the amortised guide's IWAE-K bound, when computed
    details: dict = field(default_factory=dict)  # anything else for gap.json (settings, timings, diagnostics)
    local_at_limit: int | None = None  # points whose q* stopped on the step limit, not the stopping rule (None: unknown)
    local_max_steps: int | None = None  # that limit
    # A semi-amortised guide (inference.RefinedGuide): L[q] and IWAE-K above are the refined q's; these
    # are the encoder's own q before refinement (None for any other guide).
    elbo_unrefined: Estimate | None = None
    iwae_unrefined: Estimate | None = None


def gap_top(estimates: GapEstimates) -> tuple[Estimate, Estimate, Estimate | None]:
    """(the top of the decomposition, L[q], L[q*]). The top is log p(x), unless its estimate sits
    below a valid lower bound (IWAE-K, L[q*]): then it is underestimated and that bound, the larger,
    is the better figure for log p(x); the gaps are computed from it (``gaps_from`` says which),
    and the approximation gap is then a lower bound on the true one."""
    top = estimates.log_px
    for bound in (estimates.iwae, estimates.elbo_local):
        if bound is not None and bound.mean() > top.mean():
            top = bound
    return top, estimates.elbo_amortised, estimates.elbo_local


def summarise(estimates: GapEstimates) -> dict:
    """Means, both standard errors and the gaps, as JSON-ready floats. The gaps are computed
    from the same per-point values, so approximation + amortisation = top - elbo_amortised holds
    exactly (up to float rounding), where the top is the estimate that ``gaps_from`` names
    (log_px, unless a lower bound sits above its estimate)."""
    out = {}
    named = {"log_px": estimates.log_px, "elbo_amortised": estimates.elbo_amortised,
             "elbo_local": estimates.elbo_local, "iwae": estimates.iwae}
    for key, est in named.items():
        if est is None:
            out.update({key: None, f"{key}_mc_se": None, f"{key}_point_se": None, f"{key}_method": None})
            continue
        out.update({key: est.mean(), f"{key}_mc_se": est.mc_se(), f"{key}_point_se": est.point_se(),
                    f"{key}_method": est.method})
    p, a, loc = gap_top(estimates)
    gaps = {"inference_gap": (p, a)}
    if loc is not None:
        gaps.update(approximation_gap=(p, loc), amortisation_gap=(loc, a))
    else:
        out.update(approximation_gap=None, amortisation_gap=None)
    if estimates.elbo_unrefined is not None:  # a refined guide: also the encoder's own q, before refinement
        for key, est in (("elbo_amortised_unrefined", estimates.elbo_unrefined),
                         ("iwae_unrefined", estimates.iwae_unrefined)):
            if est is not None:
                out.update({key: est.mean(), f"{key}_mc_se": est.mc_se(), f"{key}_point_se": est.point_se(),
                            f"{key}_method": est.method})
        gaps["inference_gap_unrefined"] = (p, estimates.elbo_unrefined)
        gaps["refinement_gain"] = (a, estimates.elbo_unrefined)
        if loc is not None:
            gaps["amortisation_gap_unrefined"] = (loc, estimates.elbo_unrefined)
    out["gaps_from"] = next(key for key, est in named.items() if est is p)
    for key, (upper, lower) in gaps.items():
        per_point = upper.value.double() - lower.value.double()
        out.update({key: per_point.mean().item(), f"{key}_mc_se": mc_se(upper.mc_var + lower.mc_var),
                    f"{key}_point_se": point_se(per_point)})
    return out
