"""What a gap report will compute and roughly how long it takes, printed before it starts
(an MFCVAE report at the old defaults was about 6 hours of AIS, with no word of warning)."""
from lvm_app.eval_mode import duration

PILOT_CHAINS = 2  # inference.ais: the step-size pilots run in the same batch as the chains


def point_passes(args, num_points: int) -> float:
    """Single-point forward passes of model and guide: AIS on the points, its doubled run on the
    convergence points, BDMC's forward and reverse chains, IWAE-K, L[q] and L[q*]'s optimisation.
    An optimiser step of q* counts as 3 (forward, backward to the weights); a leapfrog step as 2
    (its gradient is with respect to z only). Checked against a 668 s report (docs/results/gap.md):
    the estimate came out about 2x high, as AIS runs in larger batches than training."""
    per_chain_point = args.ais_steps * args.ais_leapfrog * 2 * (args.ais_chains + PILOT_CHAINS)
    ais = per_chain_point * (num_points + 2 * min(args.convergence_points, num_points) + 2 * args.bdmc_points)
    sampling = (args.iwae_k + 2 * args.elbo_samples) * num_points
    local = args.local_steps * args.local_particles * 3 * num_points
    return ais + sampling + local


def plan_line(args, run, num_points: int) -> str:
    """One line: the work and, from the run's own training speed, an estimate in time."""
    what = (f"{num_points} {args.split} points: AIS {args.ais_steps} steps x {args.ais_chains} chains x "
            f"{args.ais_leapfrog} leapfrog (doubled on {min(args.convergence_points, num_points)} points, BDMC on "
            f"{args.bdmc_points} simulated points), IWAE-{args.iwae_k}, L[q] with {args.elbo_samples} samples, "
            f"q* with up to {args.local_steps} steps")
    passes = point_passes(args, num_points)
    experiment, seconds_per_pass, how = run.experiment, None, "at the run's training speed"
    if experiment.evaluation_pass_seconds is not None:
        seconds_per_pass, how = experiment.evaluation_pass_seconds(run.ctx, run.built, run.data), "timed on a pilot"
    seconds_per_pass = seconds_per_pass or training_seconds_per_pass(run)
    cost = f"about {duration(passes * seconds_per_pass)}" if seconds_per_pass else f"{passes:.2g} point passes"
    return f"{what}; {cost} {how} (fewer --num-points, --ais-steps or --bdmc-points cut it)"


def training_seconds_per_pass(run) -> float | None:
    """Seconds per single-point forward pass while training: a step is a forward and backward
    pass (3 forward passes' worth) over a batch."""
    elapsed, steps = run.train_elapsed_s, run.step
    if not elapsed or not steps:
        return None
    return elapsed / (steps * run.config["train"]["batch_size"] * 3 * passes_per_training_point(run.config["settings"]))


def passes_per_training_point(settings: dict) -> float:
    """Forward passes per point of one training step, relative to the ELBO's one: K particles of
    an IWAE objective, and a refined guide's steps (each a forward and backward pass) in training."""
    factor = float(max(1, settings.get("particles") or 1)) if settings.get("objective") == "iwae" else 1.0
    if settings.get("refine") and settings.get("refine_mode") in ("detach", "full"):
        factor *= 1 + settings["refine"]
    return factor
