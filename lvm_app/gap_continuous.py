"""run/gap.py for models whose latents are all continuous (vae, mfcvae, linear_gaussian): the
flags become ``inference.gap.report.GapSettings`` and the run's modules the model, the guide and
the program that scores it; the estimates are ``inference.gap.report.continuous_estimates``."""
import math
import sys
import time

import torch

from guides import build_guide, guide_family
from inference import RefinedGuide
from inference.ais import AISSettings
from inference.gap.estimates import GapEstimates
from inference.gap.report import GapSettings, continuous_estimates
from inference.local_opt import LocalOptSettings
from lvm_app.gap_plan import plan_line
from lvm_app.command import program_name
from pyro_models.core import device_of
from pyro_models.networks import linear_flops


class NotApplicable(Exception):
    """The gap report cannot be computed for this run (exit 2)."""


def matmul_peak_gflops(n: int = 1024, repeats: int = 5, device=None) -> float:
    """float32 matmul GFLOP/s on ``device`` (where AIS ran), best of ``repeats``."""
    device = torch.device(device or "cpu")
    wait = torch.cuda.synchronize if device.type == "cuda" else lambda: None  # CUDA kernels run asynchronously
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = math.inf
    for _ in range(repeats):
        wait()
        t = time.perf_counter()
        a @ b
        wait()
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


def gap_settings(args, init: str) -> GapSettings:
    return GapSettings(
        ais=AISSettings(num_steps=args.ais_steps, num_chains=args.ais_chains, leapfrog_steps=args.ais_leapfrog,
                        schedule=args.ais_schedule),
        convergence_points=args.convergence_points, bdmc_points=args.bdmc_points, iwae_k=args.iwae_k,
        elbo_samples=args.elbo_samples, tolerance=args.check_tolerance,
        local=LocalOptSettings(init=init, lr=args.local_lr, num_particles=args.local_particles,
                               max_steps=args.local_steps))


def continuous_run_estimates(args, run, points: dict) -> GapEstimates:
    experiment, built = run.experiment, run.built
    model, guide = built.model, built.guide
    if not hasattr(model, "latent_sites") or not hasattr(guide, "families"):
        raise NotApplicable(f"model {experiment.name!r} has no per-site guide families to optimise locally")
    if not all(site.support == "real" for site in model.latent_sites):
        raise NotApplicable(f"model {experiment.name!r} has discrete latents and no gap_estimates() of its own")
    family, init = local_family_for(args, run)
    print(f"{program_name('run/gap.py')}: plan: {plan_line(args, run, next(iter(points.values())).shape[0])}", file=sys.stderr)
    plain = guide.guide if isinstance(guide, RefinedGuide) else guide  # q* starts from the encoder's own output
    local_guide = plain if family == run.config["run"]["guide"] else build_guide(
        guide_family(family), model.latent_sites, num_points=1).to(device_of(model))
    estimates = continuous_estimates(
        model.model, guide, points, gap_settings(args, init), guide_model=experiment.model_program(built),
        local_guide=local_guide, frozen_modules=list(built.modules.values()),
        max_plate_nesting=getattr(model, "max_plate_nesting", 1), progress=args.progress)
    estimates.details["local_guide"] = family
    add_decoder_throughput(estimates.details["ais"], model)
    return estimates


def add_decoder_throughput(diagnostics: dict, model) -> None:
    """GFLOP/s of decoder work in AIS against the matmul peak measured now, in this process."""
    decoder = getattr(model, "decoder", None)
    if decoder is None or linear_flops(decoder) == 0:
        return
    gflops = diagnostics["leapfrog_chain_points_per_s"] * 2 * linear_flops(decoder) / 1e9  # forward + input gradient
    peak = matmul_peak_gflops(device=device_of(model))
    diagnostics.update({"decoder_gflops_per_s": gflops, "matmul_peak_gflops": peak, "fraction_of_peak": gflops / peak})
