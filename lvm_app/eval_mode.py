"""``--eval``: which evaluation protocol follows training, and what it will cost.

The papers' protocols (e.g. IWAE-5000 on all 10000 test images, supervised baselines of 1000
steps) can take far longer than a short training run. ``--eval paper`` keeps them, by name;
``--eval quick`` uses each model's ``quick_evaluation`` settings; ``--eval auto`` (the default)
chooses the paper's protocol for a run of at least the model's default length and the quick one
for a shorter run. Settings given on the command line always win over the protocol's. The cost
is printed before the evaluation starts.
"""
import dataclasses

from inference.throughput import matmul_peak_gflops

PROTOCOLS = ("auto", "quick", "paper")
# The share of the matmul peak that a plan's other matrix work (CPC's L-BFGS probes on frames x
# features x classes) runs at on this CPU, measured by run/bench_estimates.py.
MATRIX_EFFICIENCY = 0.5


def choose_protocol(requested: str, experiment, steps: int, default_steps: int) -> tuple[str, str]:
    """(protocol, why): ``requested`` unless it is ``auto``."""
    if requested != "auto":
        return requested, f"--eval {requested}"
    if not experiment.quick_evaluation:
        return "paper", f"model {experiment.name} has one evaluation"
    if steps >= default_steps:
        return "paper", f"{steps} training steps, at least the model's default {default_steps}"
    return "quick", f"{steps} training steps, fewer than the model's default {default_steps}"


def settings_for(experiment, settings, given: set[str], protocol: str):
    """The settings with the protocol's evaluation values, except those given on the command line."""
    if protocol == "paper":
        defaults = experiment.settings_cls()
        values = {name: getattr(defaults, name) for name in experiment.quick_evaluation}
    else:
        values = dict(experiment.quick_evaluation)
    return dataclasses.replace(settings, **{k: v for k, v in values.items() if k not in given})


def _seconds_of(experiment, ctx, built, data, seconds_per_step: float | None):
    """plan -> estimated seconds (None when neither a pilot nor the training speed tells)."""
    if experiment.evaluation_pass_seconds is not None:
        pass_seconds = experiment.evaluation_pass_seconds(ctx, built, data)
    else:
        pass_seconds = None
    if pass_seconds is None and seconds_per_step:
        pass_seconds = seconds_per_step / (3 * ctx.batch_size)
    if not pass_seconds:
        return None

    def seconds(plan) -> float:
        flop_seconds = 1 / (MATRIX_EFFICIENCY * matmul_peak_gflops() * 1e9) if plan.flops else 0.0
        return plan.point_passes * pass_seconds + plan.flops * flop_seconds

    return seconds


def duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def announcement(experiment, ctx, built, data, given: set[str], protocol: str, why: str,
                 seconds_per_step: float | None) -> tuple[str | None, float | None]:
    """One line: what the evaluation computes, roughly how long it takes, and the other protocol's
    cost; and the estimated seconds of this evaluation (None where nothing tells them).

    Seconds are the plan's point passes times the seconds of one, timed on a small pilot of the
    evaluation itself where the experiment has one (``evaluation_pass_seconds``), else from the
    run's training speed (a point pass costing a third of a training point's forward and backward
    pass: rough, and too high where training is bound by per-step overhead)."""
    plan = experiment.evaluation_plan(ctx, built, data)
    if plan is None:
        return None, None
    seconds = _seconds_of(experiment, ctx, built, data, seconds_per_step)

    def cost(p) -> str:
        if seconds is None:
            return f"{p.point_passes:.2g} point passes"
        return f"about {duration(seconds(p))}"

    line = f"evaluation ({protocol}: {why}): {plan.description}; {cost(plan)}"
    if experiment.quick_evaluation:
        other = "quick" if protocol == "paper" else "paper"
        other_ctx = ctx.replace(settings=settings_for(experiment, ctx.settings, given, other))
        other_plan = experiment.evaluation_plan(other_ctx, built, data)
        if other_plan.description != plan.description:
            line += f" (--eval {other}: {cost(other_plan)})"
    return line, seconds(plan) if seconds is not None else None
