"""What a gap report will compute and roughly how long it takes, printed before it starts
(an MFCVAE report at the old defaults was about 6 hours of AIS, with no word of warning).

The estimate times the report's own pieces on pilots first (a second or two): a leapfrog step of
AIS on the report's batch and on a small one (AIS is a sequence of such steps, each a model
evaluation with gradients whose fixed cost dominates on small networks), and a pass of model and
guide as importance sampling runs them. ``run/bench_estimates.py`` compares the estimate with
the time taken. The random state is restored after every pilot: timing must not change a number."""
import time

from inference import AISSettings, ais
from inference.throughput import kept_random_state
from lvm_app.eval_mode import duration

PILOT_CHAINS = 2  # inference.ais: the step-size pilots run in the same batch as the chains
AIS_WARMUP = 20  # inference.ais.PILOT_WARMUP: transitions at beta = 0 before annealing
SMALL_BATCH = 25  # points of the doubled-AIS and BDMC runs at the defaults


def leapfrog_seconds(program, points: dict, chains: int, leapfrog: int, nesting: int) -> float:
    """Seconds of one leapfrog step of AIS (every chain of every point of ``points``): a one-step
    AIS run is its warm-up transitions only."""
    settings = AISSettings(num_steps=1, num_chains=chains, leapfrog_steps=leapfrog)
    with kept_random_state():
        started = time.perf_counter()
        ais(program, points, settings, nesting)
        return (time.perf_counter() - started) / (AIS_WARMUP * leapfrog)


def estimate_seconds(args, run, points: dict) -> float:
    """AIS's sequences of leapfrog steps (main run, the doubled run, BDMC's two) at the step times of
    their batch sizes, then importance sampling and q*'s steps at the time of an evaluation pass."""
    experiment, model = run.experiment, run.built.model
    program, nesting = model.model, model.max_plate_nesting  # AIS runs on the model itself (no auxiliary sites)
    n = next(iter(points.values())).shape[0]
    small = {key: value[:min(SMALL_BATCH, n)] for key, value in points.items()}
    chains = args.ais_chains
    t_main = leapfrog_seconds(program, points, chains, args.ais_leapfrog, nesting)
    t_small = leapfrog_seconds(program, small, chains, args.ais_leapfrog, nesting)
    per_run = (args.ais_steps + AIS_WARMUP) * args.ais_leapfrog
    seconds = per_run * t_main
    if args.convergence_points:
        seconds += (2 * args.ais_steps + AIS_WARMUP) * args.ais_leapfrog * t_small
    if args.bdmc_points:
        seconds += 2 * per_run * t_small
    pass_seconds = experiment.evaluation_pass_seconds(run.ctx, run.built, run.data)
    seconds += (args.iwae_k + 2 * args.elbo_samples) * n * pass_seconds
    # q*: each Adam step a forward and backward pass of every particle and point, or the fixed cost of one
    seconds += args.local_steps * max(t_small, 3 * args.local_particles * n * pass_seconds)
    return seconds


def plan_line(args, run, points: dict) -> tuple[str, float]:
    """One line: the work and an estimate of its time from pilots of it; and the estimate in seconds."""
    num_points = next(iter(points.values())).shape[0]
    what = (f"{num_points} {args.split} points: AIS {args.ais_steps} steps x {args.ais_chains} chains x "
            f"{args.ais_leapfrog} leapfrog (doubled on {min(args.convergence_points, num_points)} points, BDMC on "
            f"{min(args.bdmc_points, num_points)} simulated points), IWAE-{args.iwae_k}, L[q] with {args.elbo_samples} samples, "
            f"q* with up to {args.local_steps} steps")
    seconds = estimate_seconds(args, run, points)
    return (f"{what}; about {duration(seconds)}, timed on pilots (fewer --num-points, --ais-steps or --bdmc-points "
            "cut it)"), seconds
