"""``python run/gap.py --checkpoint DIR``: the inference-gap report of Cremer, Li & Duvenaud
(2018) for a trained run of any registered model with an amortised guide.

    log p(x) - L[q] = (log p(x) - L[q*]) + (L[q*] - L[q])
                      approximation gap    amortisation gap

Continuous latents (vae, mfcvae, linear_gaussian): log p(x) by AIS, checked by AIS with twice
the steps and by BDMC on data simulated from the model; L[q] and the IWAE-K bound from the
amortised guide; L[q*] from a local guide of the same family optimised per data point
(inference/gap/report.py, which a user can call on their own model). A model with discrete
latents brings its own estimator (``Experiment.gap_estimates``: the LFM enumerates its 2^K codes;
CompILE scores its discrete model, exact in the boundaries). Every figure comes with its Monte
Carlo standard error given the points and the spread over points (inference/gap/estimates.py).
The report checks itself (inference/gap/checks.py): each check that fails prints one line on
stderr, and gap.json says ``"converged": false`` while keeping the numbers. Writes gap.json and
gap.md.

Exit status: 0 success (also when a check failed: the report says so); 2 the report does not
apply to this run or a flag is bad (one line says why); 1 a failure at run time.
"""
import argparse
import math
import os
import sys
import time
from pathlib import Path

import pyro
import torch

from guides import GUIDE_FAMILIES
from inference import AISSettings, GapSettings, LocalOptSettings, RefinedGuide
from inference.gap import assemble, check_lines
from inference.training.run_files import WriteFailed, write_json, write_text
from lvm_app.command import CommandParser, program_name, seed
from lvm_app.compile_choice import COMPILE_CHOICES, COMPILE_HELP, compile_for
from lvm_app.device import DEVICE_CHOICES, UsageError, machine_fingerprint, resolve_device
from lvm_app.gap_continuous import NotApplicable, continuous_run_estimates
from lvm_app.gap_markdown import markdown
from lvm_app.run_dir import load_run
from pyro_models.experiment_kit.real_latents import REFINE_LR

PROG = program_name("run/gap.py")  # the prefix of every message


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run directory written by run/svi.py (config.json, checkpoint.pt)")
    p.add_argument("--guide", choices=sorted(GUIDE_FAMILIES),
                   help="family of the local q* (default: the run's guide; another family is allowed only if it "
                        "shares no networks, and is then started from the prior)")
    p.add_argument("--num-points", type=int, default=100, help="points to evaluate, the first of the split (default: "
                   "100; the cost, printed first, grows with it)")
    p.add_argument("--split", choices=["train", "test"], default="train", help="which split (default: train, as the paper)")
    p.add_argument("--ais-steps", type=int, default=1000, help="AIS intermediate distributions (default: 1000)")
    p.add_argument("--ais-chains", type=int, default=16, help="AIS chains per data point (default: 16)")
    p.add_argument("--ais-leapfrog", type=int, default=10, help="leapfrog steps per HMC transition (default: 10)")
    p.add_argument("--ais-schedule", choices=["sigmoid", "linear"], default="sigmoid")
    p.add_argument("--bdmc-points", type=int, default=25,
                   help="points simulated from the model for the BDMC bracket, at most --num-points (0: skip; default: 25)")
    p.add_argument("--convergence-points", type=int, default=25,
                   help="re-run AIS with 2x the steps on this many points and check the change (0: skip; default: 25)")
    p.add_argument("--check-tolerance", type=float, default=0.1,
                   help="nats the doubled AIS may move and the BDMC bracket may leave (default: 0.1)")
    p.add_argument("--iwae-k", type=int, default=5000, help="samples of the amortised guide for IWAE-K (default: 5000)")
    p.add_argument("--elbo-samples", type=int, default=1000,
                   help="samples per point for the ELBOs of q and q* (default: 1000)")
    p.add_argument("--is-k", type=int, default=100000,
                   help="importance samples for log p(x) where a model estimates it by sampling (default: 100000)")
    p.add_argument("--local-init", choices=["amortised", "prior"], default="amortised")
    p.add_argument("--local-steps", type=int, default=3000, help="maximum Adam steps for q* (default: 3000)")
    p.add_argument("--local-lr", type=float, default=1e-2)
    p.add_argument("--local-particles", type=int, default=10)
    p.add_argument("--refine", type=int, help="evaluate the run's amortised guide refined per point by this many gradient "
                   "steps on each point's ELBO (inference.RefinedGuide; default: the run's own --refine, else none)")
    p.add_argument("--refine-lr", type=float, help="step size of --refine (default: the run's, else 0.002)")
    p.add_argument("--data-dir", help="data directory (default: the run's)")
    p.add_argument("--out", help="where gap.json and gap.md go (default: the checkpoint directory)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", default="cpu", help=f"{DEVICE_CHOICES} (default: cpu; a checkpoint written on any "
                   "device loads on any other)")
    p.add_argument("--compile", choices=COMPILE_CHOICES, default="auto", help=COMPILE_HELP)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 is faster on a busy machine)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--traceback", action="store_true")
    return p


def gap_settings(args) -> GapSettings:
    """The report's settings from the flags (a model's own estimator reads what applies to it)."""
    return GapSettings(
        ais=AISSettings(num_steps=args.ais_steps, num_chains=args.ais_chains, leapfrog_steps=args.ais_leapfrog,
                        schedule=args.ais_schedule),
        convergence_points=args.convergence_points, bdmc_points=args.bdmc_points, iwae_k=args.iwae_k,
        elbo_samples=args.elbo_samples, is_k=args.is_k, tolerance=args.check_tolerance,
        local=LocalOptSettings(init=args.local_init, lr=args.local_lr, num_particles=args.local_particles,
                               max_steps=args.local_steps))


def report_for_run(args) -> dict:
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    run = load_run(args.checkpoint, args.data_dir, device)
    experiment, built, ctx = run.experiment, run.built, run.ctx
    if experiment.evaluation_points is None:
        raise NotApplicable(f"model {experiment.name!r} has no gap report: {experiment.guide_note}")
    if built.guide is None or not built.guide.amortised:
        raise NotApplicable(f"{args.checkpoint} trained a local guide: the gap report needs an amortised one")
    limit = experiment.max_evaluation_points(ctx, run.data)
    if limit is not None and args.num_points > limit[0]:
        most, why = limit
        raise NotApplicable(f"--num-points {args.num_points}: {why}" + (f"; ask for at most {most}" if most else
                                                                         ": the report cannot be computed here"))
    if args.refine is not None or args.refine_lr is not None:
        refine_for_evaluation(run, args)
    points = {k: v.to(device) for k, v in experiment.evaluation_points(ctx, run.data, args.num_points,
                                                                       args.split).items()}
    n = next(iter(points.values())).shape[0]
    pyro.set_rng_seed(args.seed)
    settings = gap_settings(args)
    if experiment.gap_estimates is not None:  # discrete latents: the model's own estimator
        if args.guide not in (None, ctx.guide):
            raise NotApplicable(f"model {experiment.name!r} takes q* of the run's own family ({ctx.guide}) only")
        # their estimators (enumeration, recurrent networks) were not measured compiled: only when asked
        compiled = args.compile == "on" and compile_for(built.modules.values(), PROG)
        estimates = experiment.gap_estimates(ctx, built, points, settings, args.progress)
    else:
        estimates = continuous_run_estimates(args, run, points, settings)
        compiled = estimates.details["compiled"]
    report = {"model": experiment.name, "dataset": ctx.dataset, "guide": ctx.guide, "local_guide": ctx.guide,
              "split": args.split, "num_points": n, "checkpoint": str(args.checkpoint), "train_steps": run.step}
    saved_settings = run.config.get("settings", {})
    for key in ("objective", "particles", "gradient", "refine", "refine_lr", "refine_mode"):
        if key in saved_settings:  # how the run trained (IWAE-K, a semi-amortised guide)
            report[f"train_{key}"] = saved_settings[key]
    if args.refine is not None or args.refine_lr is not None:
        report["evaluation_refine"] = {"steps": built.guide.steps, "lr": built.guide.lr}
    exact = experiment.exact_log_px(built, points) if experiment.exact_log_px is not None else None
    report.update(assemble(estimates, args.check_tolerance, exact))
    report["settings"] = {k: v for k, v in vars(args).items() if k not in ("progress", "traceback")}
    report["compiled"] = compiled
    report["machine"] = machine_fingerprint(device)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def refine_for_evaluation(run, args) -> None:
    """--refine/--refine-lr: the run's guide (its plain, amortised one) refined at evaluation."""
    experiment, built, settings = run.experiment, run.built, run.config.get("settings", {})
    if experiment.plain_guide is None:
        raise NotApplicable(f"--refine applies to the models with real latents and an amortised guide of a real-site "
                            f"family (vae, linear_gaussian, mfcvae); not to {experiment.name!r}")
    steps = args.refine if args.refine is not None else settings.get("refine") or 0
    if steps < 1:
        raise NotApplicable("--refine-lr needs --refine K (this run did not refine)")
    lr = args.refine_lr if args.refine_lr is not None else settings.get("refine_lr") or REFINE_LR
    built.guide = RefinedGuide(experiment.plain_guide(built), experiment.model_program(built), steps, lr, mode="eval",
                               max_plate_nesting=built.model.max_plate_nesting).eval()


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads is not None and args.threads <= 0:
        parser.error(f"--threads must be positive, got {args.threads}")
    for name in ("num_points", "ais_steps", "ais_chains", "ais_leapfrog", "iwae_k", "elbo_samples", "is_k",
                 "local_steps", "local_particles"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.refine is not None and args.refine < 1:
        parser.error(f"--refine must be at least 1, got {args.refine}")
    if args.refine_lr is not None and not (math.isfinite(args.refine_lr) and args.refine_lr > 0):
        parser.error(f"--refine-lr must be positive and finite, got {args.refine_lr}")
    out = Path(args.out or args.checkpoint)
    unwritable = unwritable_reason(out)
    if unwritable:
        print(f"{PROG}: error: cannot write the report to {out}: {unwritable}", file=sys.stderr)
        return 2
    try:
        report = report_for_run(args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except NotApplicable as why:
        print(f"{PROG}: not applicable: {why}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written (run the same command again)", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as error:
        if args.traceback:
            raise
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, FileNotFoundError) else 1
    except (RuntimeError, OSError) as error:
        if args.traceback:
            raise
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    try:  # atomically: a failed write keeps the previous report
        write_json(out / "gap.json", report)
        write_text(out / "gap.md", markdown(report))
    except WriteFailed as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    print(markdown(report))
    print(f"wrote {out}/gap.json and gap.md")
    for line in check_lines(report["checks"]):
        print(f"{PROG}: {line}", file=sys.stderr)
    return 0


def unwritable_reason(out: Path) -> str | None:
    """Why gap.json could not be written into ``out`` (checked before hours of computing)."""
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{existing} is a file, not a directory"
    if existing is not None and not os.access(existing, os.W_OK):
        return f"{existing} is not writable"
    return None


if __name__ == "__main__":
    sys.exit(main())
