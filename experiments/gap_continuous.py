"""Gap estimates for models whose latents are all continuous (vae, mfcvae, linear_gaussian):
log p(x) by AIS with HMC (bracketed by BDMC on simulated data), L[q] and IWAE-K from the
amortised guide, L[q*] from a local guide of the same family optimised per data point."""
import math
import time

import pyro
import torch

from guides import build_guide, guide_family
from inference import evaluate_importance
from inference.ais import AISSettings, ais, simulate
from inference.gap_estimates import Estimate, GapEstimates
from inference.local_opt import LocalOptSettings, optimise_local
from pyro_models.networks import linear_flops


class NotApplicable(Exception):
    """The gap report cannot be computed for this run (exit 2)."""


def matmul_peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def local_family_for(args, run) -> tuple[str, str]:
    """(family of q*, its initialisation); another family than the run's must share no networks."""
    experiment, run_guide = run.experiment, run.config["run"]["guide"]
    family = args.guide or run_guide
    if family == run_guide:
        return family, args.local_init
    if getattr(guide_family(family), "has_shared_networks", False):
        raise NotApplicable(f"--guide {family} shares networks across points; only the run's own "
                            f"guide ({run_guide}) can give q* of that family")
    if family not in experiment.guides:
        raise NotApplicable(f"guide {family!r} does not apply to model {experiment.name!r}; "
                            f"choose from: {', '.join(experiment.guides)}")
    return family, "prior"


def continuous_estimates(args, run, points: dict) -> GapEstimates:
    experiment, built = run.experiment, run.built
    model, guide = built.model, built.guide
    if not hasattr(model, "latent_sites") or not hasattr(guide, "families"):
        raise NotApplicable(f"model {experiment.name!r} has no per-site guide families to optimise locally")
    if not all(site.support == "real" for site in model.latent_sites):
        raise NotApplicable(f"model {experiment.name!r} has discrete latents and no gap_estimates() of its own")
    family, init = local_family_for(args, run)
    program = experiment.model_program(built)
    nesting = getattr(model, "max_plate_nesting", 1)
    no_idx = {k: v for k, v in points.items() if k != "idx"}
    n = next(iter(no_idx.values())).shape[0]
    details, timings = {"local_guide": family}, {}

    t = time.perf_counter()
    settings = AISSettings(num_steps=args.ais_steps, num_chains=args.ais_chains, leapfrog_steps=args.ais_leapfrog,
                           schedule=args.ais_schedule)
    result = ais(model.model, no_idx, settings, nesting, progress=args.progress, desc="AIS")
    log_px = Estimate.log_mean_exp(result.log_weights, (
        f"AIS: {args.ais_steps} {args.ais_schedule} steps, {args.ais_chains} chains, HMC with "
        f"{args.ais_leapfrog} leapfrog steps (a stochastic lower bound; MC error by the delta method over chains)"))
    details["ais"] = ais_diagnostics(result, model)
    if args.convergence_points > 0:
        details["ais_convergence"] = ais_convergence(args, model, no_idx, settings, result, nesting)
    if args.bdmc_points > 0:
        details["bdmc"] = bdmc(args, model, no_idx, settings, nesting)
    timings["log_px_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    amortised = evaluate_importance(program, guide, no_idx, args.elbo_samples, nesting, progress=args.progress,
                                    desc="L[q]")
    iwae = amortised if args.iwae_k == args.elbo_samples else evaluate_importance(
        program, guide, no_idx, args.iwae_k, nesting, progress=args.progress, desc=f"IWAE-{args.iwae_k}")
    timings["amortised_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    source = guide if family == run.config["run"]["guide"] else build_guide(
        guide_family(family), model.latent_sites, num_points=1)
    opt = optimise_local(program, source, no_idx, LocalOptSettings(
        init=init, lr=args.local_lr, num_particles=args.local_particles, max_steps=args.local_steps),
        frozen_modules=list(built.modules.values()), max_plate_nesting=nesting, progress=args.progress)
    local = evaluate_importance(program, opt.guide, {**no_idx, "idx": torch.arange(n)}, args.elbo_samples,
                                nesting, progress=args.progress, desc="L[q*]")
    details["local_opt"] = {"init": init, "steps": opt.steps, "lr": args.local_lr,
                            "particles": args.local_particles, "history": opt.history}
    timings["local_s"] = round(time.perf_counter() - t, 1)
    details["timings_s"] = timings

    samples = f"{args.elbo_samples} samples per point"
    return GapEstimates(
        log_px=log_px,
        elbo_amortised=Estimate(amortised.elbo.double(), amortised.elbo_mc_var, f"amortised guide, {samples}"),
        elbo_local=Estimate(local.elbo.double(), local.elbo_mc_var,
                            f"q* of family {family}: {opt.steps} Adam steps per point from the {init} parameters, "
                            f"then {samples}"),
        iwae=Estimate(iwae.iwae.double(), iwae.iwae_mc_var, f"IWAE-{args.iwae_k} of the amortised guide"),
        details=details)


def ais_diagnostics(result, model) -> dict:
    out = {"accept_rate": result.accept_rate, "mean_step_size": result.step_size, "wall_s": round(result.wall_s, 1),
           "row_evals": result.row_evals, "leapfrog_chain_points_per_s": result.row_evals / result.wall_s}
    decoder = getattr(model, "decoder", None)
    if decoder is not None and linear_flops(decoder) > 0:
        gflops = out["leapfrog_chain_points_per_s"] * 2 * linear_flops(decoder) / 1e9  # forward + input gradient
        peak = matmul_peak_gflops()
        out.update({"decoder_gflops_per_s": gflops, "matmul_peak_gflops": peak, "fraction_of_peak": gflops / peak})
    return out


def ais_convergence(args, model, points, settings, result, nesting) -> dict:
    """AIS again with twice the steps on the first points: how far the estimate still moves."""
    m = min(args.convergence_points, result.log_px.numel())
    sub = {k: v[:m] for k, v in points.items()}
    double = AISSettings(**{**settings.__dict__, "num_steps": 2 * settings.num_steps})
    longer = ais(model.model, sub, double, nesting, progress=args.progress, desc="AIS x2")
    return {"points": m, "steps": settings.num_steps, "log_px": result.log_px[:m].double().mean().item(),
            "steps_x2": 2 * settings.num_steps, "log_px_x2": longer.log_px.double().mean().item(),
            "change": (longer.log_px - result.log_px[:m]).double().mean().item()}


def bdmc(args, model, points, settings, nesting) -> dict:
    """Forward and reverse AIS on data simulated from the model: a bracket around log p(x)."""
    m = min(args.bdmc_points, next(iter(points.values())).shape[0])
    sub = {k: v[:m] for k, v in points.items()}
    pyro.set_rng_seed(args.seed + 1)
    latents, observed = simulate(model.model, sub, nesting)
    lower = ais(model.model, sub, settings, nesting, observed=observed, progress=args.progress, desc="BDMC fwd")
    upper = ais(model.model, sub, settings, nesting, observed=observed, start=latents, progress=args.progress,
                desc="BDMC rev")
    lo, hi = lower.log_px.double().mean().item(), upper.log_px.double().mean().item()
    return {"points": m, "log_px_lower": lo, "log_px_upper": hi, "gap": hi - lo,
            "note": "on data simulated from the model, where an exact posterior sample is known"}
