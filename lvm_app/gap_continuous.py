"""run/gap.py for models whose latents are all continuous (vae, mfcvae, linear_gaussian): the run's
modules become the model, the guide and the program that scores it, and the estimates are
``inference.gap.continuous_estimates``."""
import sys

from guides import build_guide, guide_family
from inference import GapEstimates, GapSettings
from inference.gap import continuous_estimates
from inference.throughput import matmul_peak_gflops
from lvm_app.command import program_name
from lvm_app.compile_choice import LONG_EVALUATION_S, compile_for, compiles
from lvm_app.gap_plan import plan_line
from pyro_models.core import device_of
from pyro_models.networks import linear_flops

PROG = program_name("run/gap.py")


class NotApplicable(Exception):
    """The gap report cannot be computed for this run (exit 2)."""


def local_family_for(args, run) -> tuple[str, str]:
    """(family of q*, its initialisation); another family than the run's must share no networks."""
    experiment, run_guide = run.experiment, run.ctx.guide
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


def continuous_run_estimates(args, run, points: dict, settings: GapSettings) -> GapEstimates:
    experiment, built = run.experiment, run.built
    model, guide = built.model, built.guide
    if not all(site.support == "real" for site in model.latent_sites):
        raise NotApplicable(f"model {experiment.name!r} has discrete latents and no gap_estimates() of its own")
    family, init = local_family_for(args, run)
    line, seconds = plan_line(args, run, points)
    print(f"{PROG}: plan: {line}", file=sys.stderr)
    compiled = (compiles(args.compile, "evaluation", device_of(model), seconds >= LONG_EVALUATION_S)
                and compile_for(built.modules.values(), PROG))
    plain = experiment.plain_guide(built)  # q* starts from the encoder's own output
    local_guide = plain if family == run.ctx.guide else build_guide(
        guide_family(family), model.latent_sites, num_points=1).to(device_of(model))
    settings.local.init = init
    estimates = continuous_estimates(
        model.model, guide, points, settings, guide_model=experiment.model_program(built), local_guide=local_guide,
        frozen_modules=list(built.modules.values()), max_plate_nesting=model.max_plate_nesting,
        progress=args.progress, notify=lambda line: print(f"{PROG}: {line}", file=sys.stderr))
    estimates.details["local_guide"] = family
    estimates.details["compiled"] = compiled
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
