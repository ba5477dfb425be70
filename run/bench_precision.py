#!/usr/bin/env python
"""Training speed with ``--precision bf16`` against fp32, in one process.

Blocks of fp32 and bf16 training steps alternate (fp32 first in even rounds, bf16 first in odd
ones), on one model and one optimiser, so load from other jobs on a shared machine hits both
alike; the medians of the blocks' steps/s and their ratio are printed. The speed-up depends on
the hardware's bfloat16 matmuls (AVX512-BF16 or AMX on CPUs, tensor cores on GPUs).

    python run/bench_precision.py [--block 20 --rounds 6] -- --model vae --dataset binarized_mnist
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pyro  # noqa: E402

from inference.training.loop import make_optimizer, parameters_of  # noqa: E402
from inference.training.precision import PRECISIONS, with_precision  # noqa: E402
from lvm_app.cli import parse  # noqa: E402
from lvm_app.training_run import run_context  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="run/bench_precision.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--block", type=int, default=20, help="training steps per timed block (default: 20)")
    p.add_argument("--rounds", type=int, default=6, help="blocks of each precision (default: 6)")
    p.add_argument("svi_flags", nargs="+", help="run/svi.py flags choosing the model, after --")
    args = p.parse_args(argv)
    _, experiment, run = parse(args.svi_flags)
    ctx = run_context(experiment, run).replace(seed=0)
    data = experiment.load_data(ctx)
    ctx = ctx.replace(config=experiment.model_config(ctx, data))
    pyro.set_rng_seed(0)
    built = experiment.build(ctx, data)
    batches = experiment.batches(ctx, data)
    schedule = experiment.schedule(ctx, built)
    params = parameters_of(built.modules)
    optimizer = make_optimizer(params, 1e-4)
    objectives = {precision: with_precision(built.objective, precision, "cpu") for precision in PRECISIONS}
    step = 0

    def train(precision: str, steps: int) -> None:
        nonlocal step
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            objectives[precision](batches(step), **(schedule(step) if schedule else {}))
            optimizer.step()
            step += 1

    for precision in PRECISIONS:  # warm-up: first-call validation, allocator, kernels
        train(precision, 2)
    speeds = {precision: [] for precision in PRECISIONS}
    for r in range(args.rounds):
        for precision in PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]:
            started = time.perf_counter()
            train(precision, args.block)
            speeds[precision].append(args.block / (time.perf_counter() - started))
    medians = {precision: statistics.median(values) for precision, values in speeds.items()}
    for precision, values in speeds.items():
        print(f"{precision}: median {medians[precision]:.2f} steps/s (blocks: {', '.join(f'{v:.2f}' for v in values)})")
    print(f"bf16 / fp32 speed: {medians['bf16'] / medians['fp32']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
