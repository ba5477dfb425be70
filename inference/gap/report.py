"""The inference-gap decomposition of Cremer, Li & Duvenaud (2018) for your own Pyro model and guide.

    log p(x) - L[q] = (log p(x) - L[q*]) + (L[q*] - L[q])
                      approximation gap    amortisation gap

    from inference import gap_report
    report = gap_report(model, guide, {"x": x})
    report["amortisation_gap"], report["checks"], report["converged"]

``model(**data)`` is a Pyro program whose latent sites are real-valued and, like its observed
sites, inside a plate named "data" over the points (the first dimension of every tensor in
``data``); ``guide(**data)`` samples the same latent sites. log p(x) is AIS (bracketed by BDMC on
simulated data and re-run with twice the steps on a few points); L[q] and IWAE-K come from the
guide; L[q*] from a local guide of the same family optimised per point, which needs a guide from
``guides.build_guide`` (with any other guide the report says why it skips q*). The report then
checks itself (inference/gap/checks.py): failed checks are listed in ``report["checks"]``, set
``report["converged"]`` to False and are raised as ``GapCheckWarning``s; the numbers stay.

A semi-amortised guide (``inference.RefinedGuide``) is refined once per point: L[q] and IWAE-K are
those of the refined q, and ``elbo_amortised_unrefined``, ``iwae_unrefined``,
``amortisation_gap_unrefined`` and ``refinement_gain`` those of the encoder's own q before it;
q* is fitted from the encoder's output, as for the plain guide.
"""
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from guides import Guide
from inference.ais import AISSettings, ais
from inference.bdmc import bdmc
from inference.importance import ImportanceResult, evaluate_importance
from inference.local_opt import LocalOptSettings, optimise_local
from inference.log_weights import DATA_PLATE
from inference.refine import RefinedGuide

from .checks import check_lines, consistency_checks, converged, forecast_line, noise_forecast
from .estimates import Estimate, GapEstimates, summarise


class GapCheckWarning(UserWarning):
    """A gap report's check failed, or could not be run: its numbers are not to be trusted as they are."""


@dataclass
class GapSettings:
    """How a gap report estimates each quantity: the one settings type of every gap estimator (the
    continuous models' here, and a model's own, which reads what applies to it: CompILE's reads
    ``elbo_samples``, ``is_k`` and ``local``; the LFM's, which enumerates, ``local.max_steps``)."""

    ais: AISSettings = field(default_factory=AISSettings)
    convergence_points: int = 25  # AIS again with twice the steps on this many points (0: skip)
    bdmc_points: int = 100  # points simulated from the model for the BDMC bracket (0: skip)
    iwae_k: int = 5000  # samples of the guide for IWAE-K
    elbo_samples: int = 1000  # samples per point for L[q] and L[q*]
    is_k: int = 100000  # importance samples for log p(x) where a model's own estimator samples it
    local: LocalOptSettings = field(default_factory=LocalOptSettings)  # how q* is fitted
    tolerance: float = 0.1  # nats: what the doubled-AIS check and the BDMC bracket may move or leave


def _local_skip_reason(guide, init: str) -> str | None:
    """Why q* cannot be fitted from this guide (None: it can)."""
    if not isinstance(guide, Guide):
        return (f"q* needs a guide from guides.build_guide (a family per latent site, so the same family can be "
                f"fitted per point); this guide is a {type(guide).__name__}")
    if init == "amortised" and not guide.amortised:
        return "q* starts from the guide's output (local init 'amortised'), but this guide is local: use init 'prior'"
    return None


def plate_name_of(model) -> str:
    """The per-datapoint plate of a library model's ``model`` method, else "data"."""
    return getattr(getattr(model, "__self__", None), "plate_name", DATA_PLATE)


def _modules_of(*programs) -> list[nn.Module]:
    """The modules behind bound methods like ``vae.model``: held fixed while q* is fitted."""
    found = []
    for program in programs:
        owner = getattr(program, "__self__", program)
        if isinstance(owner, nn.Module):
            found.append(owner)
    return found


def continuous_estimates(model, guide, data: dict, settings: GapSettings = GapSettings(), *, guide_model=None,
                         local_guide=None, frozen_modules=(), max_plate_nesting: int = 1, progress: bool = False,
                         data_plate: str | None = None, notify: Callable[[str], None] | None = None) -> GapEstimates:
    """log p(x) by AIS, L[q] and IWAE-K, and L[q*], per point (see the module docstring).

    ``guide_model``: the program the guide is scored against (default ``model``; an auxiliary
    guide needs ``guides.with_auxiliary(model, reverse)``). ``local_guide``: the guide whose
    families q* takes (default ``guide``; q* starts from ``local_guide``'s own output when
    ``settings.local.init`` is "amortised"). ``frozen_modules``: held fixed while q* is fitted
    (by default the modules behind ``model`` and ``guide_model`` when they are bound methods).
    ``data_plate``: the name of the per-datapoint plate (default: the model's ``plate_name``, else
    "data"). ``notify``: receives, as soon as the main AIS run has shown its noise, a line for each
    AIS check that cannot pass at the budget asked for (default: a ``GapCheckWarning``).
    """
    guide_model = model if guide_model is None else guide_model
    plate = data_plate or plate_name_of(model)
    data = {k: v for k, v in data.items() if k != "idx"}
    details, timings = {}, {}

    t = time.perf_counter()
    a = settings.ais
    result = ais(model, data, a, max_plate_nesting, progress=progress, desc="AIS", data_plate=plate)
    log_px = Estimate.log_mean_exp(result.log_weights, (
        f"AIS: {a.num_steps} {a.schedule} steps, {a.num_chains} chains, HMC with {a.leapfrog_steps} leapfrog steps and "
        f"step sizes set by {a.pilot_chains} pilot chains per point{jumps_note(result)} (a stochastic lower bound; "
        "MC error by the delta method over chains)"))
    details["ais"] = ais_diagnostics(result)
    details["check_noise_forecast"] = forecast_check_noise(log_px, settings, notify)
    if settings.convergence_points > 0:
        details["ais_convergence"] = ais_doubling(model, data, a, result, settings.convergence_points,
                                                  max_plate_nesting, progress, plate)
    if settings.bdmc_points > 0:
        m = min(settings.bdmc_points, result.log_px.numel())
        details["bdmc_simulated"] = bdmc(model, {k: v[:m] for k, v in data.items()}, a, max_plate_nesting, progress,
                                         data_plate=plate)
    timings["log_px_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    samples = f"{settings.elbo_samples} samples per point"
    if isinstance(guide, RefinedGuide):
        estimates = _refined_estimates(guide_model, guide, data, settings, max_plate_nesting, progress, plate, log_px,
                                       details)
    else:
        amortised = evaluate_importance(guide_model, guide, data, settings.elbo_samples, max_plate_nesting,
                                        progress=progress, desc="L[q]", data_plate=plate)
        iwae = amortised if settings.iwae_k == settings.elbo_samples else evaluate_importance(
            guide_model, guide, data, settings.iwae_k, max_plate_nesting, progress=progress,
            desc=f"IWAE-{settings.iwae_k}", data_plate=plate)
        estimates = GapEstimates(
            log_px=log_px,
            elbo_amortised=Estimate(amortised.elbo.double(), amortised.elbo_mc_var, f"amortised guide, {samples}"),
            elbo_local=None,
            iwae=Estimate(iwae.iwae.double(), iwae.iwae_mc_var, f"IWAE-{settings.iwae_k} of the amortised guide"),
            details=details)
    timings["amortised_s"] = round(time.perf_counter() - t, 1)

    if local_guide is None:
        local_guide = guide.guide if isinstance(guide, RefinedGuide) else guide
    skip = _local_skip_reason(local_guide, settings.local.init)
    if skip is not None:
        details["local_skipped"] = skip
    else:
        t = time.perf_counter()
        frozen = [*frozen_modules] or _modules_of(model, guide_model)
        opt = optimise_local(guide_model, local_guide, data, settings.local, frozen_modules=frozen,
                             max_plate_nesting=max_plate_nesting, progress=progress, data_plate=plate)
        local = evaluate_importance(guide_model, opt.points_guide(), data, settings.elbo_samples, max_plate_nesting,
                                    progress=progress, desc="L[q*]", data_plate=plate)
        details["local_opt"] = {"init": settings.local.init, "steps": opt.steps, "max_steps": settings.local.max_steps,
                                "converged": opt.converged, "lr": settings.local.lr,
                                "particles": settings.local.num_particles, "history": opt.history}
        timings["local_s"] = round(time.perf_counter() - t, 1)
        families = ", ".join(sorted({type(f).__name__ for f in local_guide.families}))
        estimates.elbo_local = Estimate(
            local.elbo.double(), local.elbo_mc_var,
            f"q* of the family {families}: {opt.steps} Adam steps per point from the {settings.local.init} "
            f"parameters, then {samples}")
        estimates.local_at_limit = 0 if opt.converged else local.elbo.numel()
        estimates.local_max_steps = settings.local.max_steps
    details["timings_s"] = timings
    return estimates


def evaluate_refined(model, guide: RefinedGuide, data: dict, num_particles, max_plate_nesting: int = 1,
                     progress: bool = False, desc: str = "L[q]", data_plate: str = DATA_PLATE, chunk: int = 256):
    """({K: ImportanceResult of the refined q}, {K: ... of the unrefined q}, refinements) for each
    K in ``num_particles`` (an int or a tuple): each point refined once (``guide.refine``), in
    chunks of ``chunk`` points, and its initial and refined parameters scored as local guides (the
    model is called without ``idx``: a chunk is the local guide's whole table)."""
    ks = (num_particles,) if isinstance(num_particles, int) else tuple(dict.fromkeys(num_particles))
    n = next(iter(data.values())).shape[0]
    after, before, refinements = {k: [] for k in ks}, {k: [] for k in ks}, []
    for start in range(0, n, chunk):
        part = {key: value[start:start + chunk] for key, value in data.items()}
        r = guide.refine(**part)
        refinements.append(r)
        for k in ks:
            for params, into, which in ((r.refined, after, "refined"), (r.initial, before, "unrefined")):
                into[k].append(evaluate_importance(model, guide.local_guide(params), part, k, max_plate_nesting,
                                                   progress=progress, desc=f"{desc} {which}, K={k}",
                                                   data_plate=data_plate))
    return ({k: _concatenate(v) for k, v in after.items()}, {k: _concatenate(v) for k, v in before.items()},
            refinements)


def _concatenate(results):
    cat = {key: torch.cat([getattr(r, key) for r in results]) for key in ("elbo", "iwae", "ess", "elbo_mc_var",
                                                                        "iwae_mc_var")}
    return ImportanceResult(num_particles=results[0].num_particles, **cat)


def _refined_estimates(guide_model, guide: RefinedGuide, data: dict, settings: GapSettings, max_plate_nesting: int,
                       progress: bool, plate: str, log_px: Estimate, details: dict) -> GapEstimates:
    started = time.perf_counter()
    after, before, refinements = evaluate_refined(guide_model, guide, data, (settings.elbo_samples, settings.iwae_k),
                                                  max_plate_nesting, progress, "L[q]", plate)
    elbo_trace = torch.cat([r.elbo for r in refinements], dim=1)  # (steps, N): single-sample estimates
    what = f"{guide.steps} steps of size {guide.lr} (mode {guide.mode}, {guide.num_samples} sample(s) per step)"
    details["refinement"] = {"steps": guide.steps, "lr": guide.lr, "mode": guide.mode, "num_samples": guide.num_samples,
                             "max_grad_norm": guide.max_grad_norm,
                             "elbo_estimate_per_step": [round(v, 3) for v in elbo_trace.double().mean(1).tolist()],
                             "wall_s": round(time.perf_counter() - started, 1)}
    samples = f"{settings.elbo_samples} samples per point"
    a, b = after[settings.elbo_samples], before[settings.elbo_samples]
    ai, bi = after[settings.iwae_k], before[settings.iwae_k]
    return GapEstimates(
        log_px=log_px,
        elbo_amortised=Estimate(a.elbo.double(), a.elbo_mc_var, f"semi-amortised guide refined by {what}, {samples}"),
        elbo_local=None,
        iwae=Estimate(ai.iwae.double(), ai.iwae_mc_var, f"IWAE-{settings.iwae_k} of the refined guide"),
        details=details,
        elbo_unrefined=Estimate(b.elbo.double(), b.elbo_mc_var, f"the encoder's own q (before refinement), {samples}"),
        iwae_unrefined=Estimate(bi.iwae.double(), bi.iwae_mc_var, f"IWAE-{settings.iwae_k} of the encoder's own q"))


def forecast_check_noise(log_px: Estimate, settings: GapSettings, notify: Callable[[str], None] | None) -> dict:
    """The AIS checks' standard errors forecast from the main run (``checks.noise_forecast``),
    told to ``notify`` before their own AIS runs start when they cannot pass."""
    sizes = {"ais_doubling": settings.convergence_points, "bdmc_bracket": settings.bdmc_points}
    forecasts = {}
    for name, points in sizes.items():
        if points > 0:
            points = min(points, log_px.value.numel())
            forecasts[name] = noise_forecast(log_px, points, settings.ais.num_chains, settings.tolerance)
            line = forecast_line(name, forecasts[name], settings.tolerance)
            if line is not None and notify is not None:
                notify(line)
            elif line is not None:
                warnings.warn(line, GapCheckWarning, stacklevel=3)
    return forecasts

def jumps_note(result) -> str:
    if not result.jump_sites:
        return ""
    return f", and a jump between mixture components per transition at {', '.join(result.jump_sites)}"


def ais_diagnostics(result) -> dict:
    return {"jump_sites": list(result.jump_sites), "accept_rate": result.accept_rate, "mean_step_size": result.step_size, "wall_s": round(result.wall_s, 1),
            "row_evals": result.row_evals, "pilot_row_evals": result.pilot_row_evals,
            "leapfrog_chain_points_per_s": (result.row_evals + result.pilot_row_evals) / result.wall_s}


def ais_doubling(model, data: dict, settings: AISSettings, result, points: int, max_plate_nesting: int = 1,
                 progress: bool = False, data_plate: str = DATA_PLATE) -> dict:
    """AIS again with twice the steps on the first points: how far the estimate still moves,
    with the Monte Carlo standard error of that change."""
    m = min(points, result.log_px.numel())
    sub = {k: v[:m] for k, v in data.items()}
    double = AISSettings(**{**settings.__dict__, "num_steps": 2 * settings.num_steps})
    longer = ais(model, sub, double, max_plate_nesting, progress=progress, desc="AIS x2", data_plate=data_plate)
    base = Estimate.log_mean_exp(result.log_weights[:, :m], "")
    twice = Estimate.log_mean_exp(longer.log_weights, "")
    change = twice.value - base.value
    return {"points": m, "steps": settings.num_steps, "log_px": base.mean(), "steps_x2": double.num_steps,
            "log_px_x2": twice.mean(), "change": change.mean().item(),
            "change_mc_se": math.sqrt((base.mc_var + twice.mc_var).sum().item()) / m,
            "wall_s": round(longer.wall_s, 1)}


def assemble(estimates: GapEstimates, tolerance: float = 0.1, log_px_exact: torch.Tensor | None = None) -> dict:
    """The report: means and errors (``summarise``), the details, the checks and ``converged``."""
    report = dict(estimates.details)
    report.update(summarise(estimates))
    if log_px_exact is not None:
        log_px_exact = log_px_exact.cpu()  # where the estimates are
        report["log_px_exact"] = log_px_exact.double().mean().item()
    checks = consistency_checks(estimates, tolerance, log_px_exact)
    report["checks"] = checks
    report["converged"] = converged(checks)
    return report


def gap_report(model, guide, data: dict, settings: GapSettings = GapSettings(), *, guide_model=None,
               local_guide=None, frozen_modules=(), max_plate_nesting: int = 1, log_px_exact=None,
               progress: bool = False, warn: bool = True, data_plate: str | None = None) -> dict:
    """The gap report of ``guide`` on ``model`` at the points in ``data`` (see the module
    docstring and ``continuous_estimates`` for the arguments). Returns a JSON-ready dict: each
    quantity's mean with ``*_mc_se`` (Monte Carlo error given the points) and ``*_point_se``
    (spread over the points), the two gaps, the details, ``checks`` and ``converged``. With
    ``warn``, each check that failed or could not be run is raised as a ``GapCheckWarning``."""
    estimates = continuous_estimates(model, guide, data, settings, guide_model=guide_model, local_guide=local_guide,
                                     frozen_modules=frozen_modules, max_plate_nesting=max_plate_nesting,
                                     progress=progress, data_plate=data_plate,
                                     notify=None if warn else (lambda line: None))
    report = assemble(estimates, settings.tolerance, log_px_exact)
    if warn:
        for line in check_lines(report["checks"]):
            warnings.warn(line, GapCheckWarning, stacklevel=2)
        if "local_skipped" in report:
            warnings.warn(f"q* skipped: {report['local_skipped']}", GapCheckWarning, stacklevel=2)
    return report
