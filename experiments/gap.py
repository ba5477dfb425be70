"""``python run/gap.py --checkpoint DIR``: the inference-gap report of Cremer, Li & Duvenaud
(2018) for a trained run of any registered model with an amortised guide.

    log p(x) - L[q] = (log p(x) - L[q*]) + (L[q*] - L[q])
                      approximation gap    amortisation gap

log p(x) by AIS (continuous latents; importance sampling with a large K when some latent is
discrete, and the report says so), bracketed by BDMC on data simulated from the model; L[q]
and the IWAE-K bound from the amortised guide; L[q*] from a local guide of the same family
optimised per data point (``inference.local_opt``). Writes gap.json and gap.md.

Exit status: 0 success; 2 the report does not apply to this run or a flag is bad (one line
says why); 1 a failure at run time.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import pyro
import torch

from guides import GUIDE_FAMILIES, guide_family
from inference import evaluate_importance
from inference.ais import AISSettings, ais, simulate
from inference.local_opt import LocalOptSettings, optimise_local
from pyro_models.networks import linear_flops

from .run_dir import load_run


class NotApplicable(Exception):
    """The gap report cannot be computed for this run (exit 2)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run/gap.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run directory written by run/svi.py (config.json, checkpoint.pt)")
    p.add_argument("--guide", choices=sorted(GUIDE_FAMILIES),
                   help="family of the local q* (default: the run's guide; another family is allowed only if it "
                        "shares no networks, and is then started from the prior)")
    p.add_argument("--num-points", type=int, default=1000, help="training points to evaluate (default: 1000)")
    p.add_argument("--split", choices=["train", "test"], default="train", help="which split (default: train, as the paper)")
    p.add_argument("--ais-steps", type=int, default=1000, help="AIS intermediate distributions (default: 1000)")
    p.add_argument("--ais-chains", type=int, default=16, help="AIS chains per data point (default: 16)")
    p.add_argument("--ais-leapfrog", type=int, default=10, help="leapfrog steps per HMC transition (default: 10)")
    p.add_argument("--ais-schedule", choices=["sigmoid", "linear"], default="sigmoid")
    p.add_argument("--bdmc-points", type=int, default=100,
                   help="points simulated from the model for the BDMC bracket (0: skip; default: 100)")
    p.add_argument("--convergence-points", type=int, default=0,
                   help="re-run AIS with 2x the steps on this many points and report the change (default: 0)")
    p.add_argument("--iwae-k", type=int, default=5000, help="samples of the amortised guide for IWAE-K (default: 5000)")
    p.add_argument("--elbo-samples", type=int, default=1000,
                   help="samples per point for the ELBOs of q and q* (default: 1000)")
    p.add_argument("--is-k", type=int, default=100000,
                   help="importance samples for log p(x) when some latent is discrete (default: 100000)")
    p.add_argument("--local-init", choices=["amortised", "prior"], default="amortised")
    p.add_argument("--local-steps", type=int, default=3000, help="maximum Adam steps for q* (default: 3000)")
    p.add_argument("--local-lr", type=float, default=1e-2)
    p.add_argument("--local-particles", type=int, default=10)
    p.add_argument("--data-dir", help="data directory (default: the run's)")
    p.add_argument("--out", help="where gap.json and gap.md go (default: the checkpoint directory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 is faster on a busy machine)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--traceback", action="store_true")
    return p


def matmul_peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    n = values.numel()
    return values.mean().item(), (values.std() / math.sqrt(n)).item() if n > 1 else float("nan")


def gap_report(args) -> dict:
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_run(args.checkpoint, args.data_dir)
    experiment, built, data = run.experiment, run.built, run.data
    model, guide = built.model, built.guide
    for needed in ("evaluation_points", "model_program"):
        if not hasattr(experiment, needed):
            raise NotApplicable(f"model {experiment.name!r} does not provide {needed}() for the gap report")
    if guide is None or not getattr(guide, "amortised", False):
        raise NotApplicable(f"{args.checkpoint} trained a local guide: the gap report needs an amortised one")
    if not hasattr(model, "latent_sites") or not hasattr(guide, "families"):
        raise NotApplicable(f"model {experiment.name!r} has no per-site guide families to optimise locally")
    run_guide = run.config["run"]["guide"]
    local_family = args.guide or run_guide
    local_init = args.local_init
    same_family = local_family == run_guide
    if not same_family:
        cls = guide_family(local_family)
        if getattr(cls, "has_shared_networks", False):
            raise NotApplicable(f"--guide {local_family} shares networks across points; only the run's own "
                                f"guide ({run_guide}) can give q* of that family")
        if local_family not in experiment.guides:
            raise NotApplicable(f"guide {local_family!r} does not apply to model {experiment.name!r}; "
                                f"choose from: {', '.join(experiment.guides)}")
        local_init = "prior"
    program = experiment.model_program(built)
    nesting = getattr(model, "max_plate_nesting", 1)
    points = experiment.evaluation_points(data, args.num_points, args.split)
    n = points["x"].shape[0] if "x" in points else next(iter(points.values())).shape[0]
    continuous = all(site.support == "real" for site in model.latent_sites)
    pyro.set_rng_seed(args.seed)
    report = {"model": experiment.name, "dataset": run.config["run"]["dataset"], "guide": run_guide,
              "local_guide": local_family, "same_family": same_family, "split": args.split, "num_points": n,
              "checkpoint": str(args.checkpoint), "train_steps": run.step}
    timings = {}

    # log p(x) ---------------------------------------------------------------------------------
    ais_settings = AISSettings(num_steps=args.ais_steps, num_chains=args.ais_chains,
                               leapfrog_steps=args.ais_leapfrog, schedule=args.ais_schedule)
    no_idx = {k: v for k, v in points.items() if k != "idx"}
    if continuous:
        result = ais(model.model, no_idx, ais_settings, nesting, progress=args.progress, desc="AIS")
        log_px = result.log_px
        report["log_px_method"] = (f"AIS: {args.ais_steps} {args.ais_schedule} steps, {args.ais_chains} chains, "
                                   f"HMC with {args.ais_leapfrog} leapfrog steps")
        report["ais"] = {"accept_rate": result.accept_rate, "mean_step_size": result.step_size,
                         "wall_s": round(result.wall_s, 1), "row_evals": result.row_evals}
        decoder = getattr(model, "decoder", None)
        rate = result.row_evals / result.wall_s
        report["ais"]["leapfrog_chain_points_per_s"] = rate
        if decoder is not None:
            gflops = rate * 2 * linear_flops(decoder) / 1e9  # forward + gradient w.r.t. the input
            peak = matmul_peak_gflops()
            report["ais"].update({"decoder_gflops_per_s": gflops, "matmul_peak_gflops": peak,
                                  "fraction_of_peak": gflops / peak})
        if args.convergence_points > 0:
            m = min(args.convergence_points, n)
            sub = {k: v[:m] for k, v in no_idx.items()}
            double = AISSettings(**{**ais_settings.__dict__, "num_steps": 2 * args.ais_steps})
            longer = ais(model.model, sub, double, nesting, progress=args.progress, desc="AIS x2")
            report["ais_convergence"] = {"points": m, "steps": args.ais_steps, "log_px": log_px[:m].double().mean().item(),
                                         "steps_x2": 2 * args.ais_steps, "log_px_x2": longer.log_px.double().mean().item(),
                                         "change": (longer.log_px[:m] - log_px[:m]).double().mean().item()}
        if args.bdmc_points > 0:
            m = min(args.bdmc_points, n)
            sub = {k: v[:m] for k, v in no_idx.items()}
            latents, observed = simulate(model.model, sub, nesting)
            lower = ais(model.model, sub, ais_settings, nesting, observed=observed, progress=args.progress, desc="BDMC fwd")
            upper = ais(model.model, sub, ais_settings, nesting, observed=observed, start=latents,
                        progress=args.progress, desc="BDMC rev")
            lo, hi = lower.log_px.double().mean().item(), upper.log_px.double().mean().item()
            report["bdmc"] = {"points": m, "log_px_lower": lo, "log_px_upper": hi, "gap": hi - lo,
                              "note": "on data simulated from the model, where an exact posterior sample is known"}
    else:
        report["log_px_method"] = (f"importance sampling with the amortised guide, K={args.is_k} "
                                   "(a latent is discrete: AIS with HMC does not apply)")
        est = evaluate_importance(program, guide, no_idx, args.is_k, nesting, progress=args.progress, desc="IS log p(x)")
        log_px = est.iwae
    timings["log_px_s"] = round(time.perf_counter() - started, 1)

    # the amortised guide: L[q] and IWAE-K -----------------------------------------------------
    t = time.perf_counter()
    amortised = evaluate_importance(program, guide, no_idx, args.elbo_samples, nesting, progress=args.progress,
                                    desc="L[q]")
    iwae = amortised.iwae if args.iwae_k == args.elbo_samples else evaluate_importance(
        program, guide, no_idx, args.iwae_k, nesting, progress=args.progress, desc=f"IWAE-{args.iwae_k}").iwae
    timings["amortised_s"] = round(time.perf_counter() - t, 1)

    # the local q* of the same family ----------------------------------------------------------
    t = time.perf_counter()
    reparam = all(f.site.support == "real" for f in guide.families)  # reparameterised samplers
    elbo_local = None
    if reparam:
        source_guide = guide
        if not same_family:
            from guides import build_guide
            source_guide = build_guide(guide_family(local_family), model.latent_sites, num_points=1)
        settings = LocalOptSettings(init=local_init, lr=args.local_lr, num_particles=args.local_particles,
                                    max_steps=args.local_steps)
        opt = optimise_local(program, source_guide, no_idx, settings, frozen_modules=list(built.modules.values()),
                             max_plate_nesting=nesting, progress=args.progress)
        local = evaluate_importance(program, opt.guide, {**no_idx, "idx": torch.arange(n)}, args.elbo_samples,
                                    nesting, progress=args.progress, desc="L[q*]")
        elbo_local = local.elbo
        report["local_opt"] = {"init": local_init, "steps": opt.steps, "lr": args.local_lr,
                               "particles": args.local_particles, "history": opt.history}
    else:
        report["local_opt"] = {"skipped": "the guide has no reparameterised sampler (discrete latents)"}
    timings["local_s"] = round(time.perf_counter() - t, 1)

    # the report -------------------------------------------------------------------------------
    for key, values in (("log_px", log_px), ("iwae", iwae), ("elbo_amortised", amortised.elbo)):
        report[key], report[f"{key}_se"] = _mean_se(values)
    report["log_px_upper"] = report.get("bdmc", {}).get("log_px_upper")
    if elbo_local is not None:
        report["elbo_local"], report["elbo_local_se"] = _mean_se(elbo_local)
        report["approximation_gap"], report["approximation_gap_se"] = _mean_se(log_px - elbo_local)
        report["amortisation_gap"], report["amortisation_gap_se"] = _mean_se(elbo_local - amortised.elbo)
    else:
        report.update(elbo_local=None, approximation_gap=None, amortisation_gap=None)
    report["inference_gap"] = report["log_px"] - report["elbo_amortised"]
    exact = experiment.exact_metrics(model, no_idx["x"], "exact") if hasattr(experiment, "exact_metrics") else {}
    if exact.get("exact_log_px_exact") is not None:  # the linear-Gaussian model: log p(x) in closed form
        report["log_px_exact"] = exact["exact_log_px_exact"]
    report["settings"] = {k: v for k, v in vars(args).items() if k not in ("progress", "traceback")}
    report["timings_s"] = timings
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def _f(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    r = report
    lines = [
        f"Gap report: model `{r['model']}`, data `{r['dataset']}`, guide `{r['guide']}` "
        f"(q* family `{r['local_guide']}`), {r['num_points']} {r['split']} points, {r['train_steps']} training steps.",
        "",
        "| guide | log p(x) | log p(x) upper (BDMC, sim.) | IWAE-K | L[q*] | L[q] | approximation gap | amortisation gap |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['guide']} | {_f(r['log_px'])} | {_f(r['log_px_upper'])} | {_f(r['iwae'])} | {_f(r['elbo_local'])} | "
        f"{_f(r['elbo_amortised'])} | {_f(r['approximation_gap'])} | {_f(r['amortisation_gap'])} |",
        "",
        f"- log p(x): {r['log_px_method']}." + (f" Exact: {r['log_px_exact']:.2f}." if "log_px_exact" in r else ""),
    ]
    if "bdmc" in r:
        b = r["bdmc"]
        lines.append(f"- BDMC on {b['points']} points simulated from the model: lower {b['log_px_lower']:.2f}, "
                     f"upper {b['log_px_upper']:.2f}, gap {b['gap']:.2f} nats.")
    if "ais_convergence" in r:
        c = r["ais_convergence"]
        lines.append(f"- AIS with {c['steps_x2']} instead of {c['steps']} steps on {c['points']} points moves the "
                     f"estimate by {c['change']:+.3f} nats.")
    if "ais" in r and "decoder_gflops_per_s" in r["ais"]:
        a = r["ais"]
        lines.append(f"- AIS throughput: {a['leapfrog_chain_points_per_s']:.0f} leapfrog steps x chains x points / s, "
                     f"{a['decoder_gflops_per_s']:.1f} GFLOP/s of decoder work ({100 * a['fraction_of_peak']:.0f}% of "
                     f"the {a['matmul_peak_gflops']:.0f} GFLOP/s matmul peak); acceptance {a['accept_rate']:.2f}.")
    lo = r["local_opt"]
    if "steps" in lo:
        lines.append(f"- q*: {lo['steps']} Adam steps (lr {lo['lr']}, {lo['particles']} samples per step) from the "
                     f"{lo['init']} parameters; L[q], L[q*] with {r['settings']['elbo_samples']} samples per point, "
                     f"IWAE with K={r['settings']['iwae_k']}.")
    lines.append(f"- wall time {r['wall_s']:.0f} s ({', '.join(f'{k} {v}' for k, v in r['timings_s'].items())}).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads is not None and args.threads <= 0:
        parser.error(f"--threads must be positive, got {args.threads}")
    for name in ("num_points", "ais_steps", "ais_chains", "ais_leapfrog", "iwae_k", "elbo_samples", "is_k",
                 "local_steps", "local_particles"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    try:
        report = gap_report(args)
    except NotApplicable as why:
        print(f"run/gap.py: not applicable: {why}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as error:
        if args.traceback:
            raise
        print(f"run/gap.py: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, FileNotFoundError) else 1
    except (RuntimeError, OSError) as error:
        if args.traceback:
            raise
        print(f"run/gap.py: error: {error}", file=sys.stderr)
        return 1
    out = Path(args.out or args.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gap.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gap.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out}/gap.json and gap.md")
    return 0
