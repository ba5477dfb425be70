#!/usr/bin/env python
"""Where a training step's time goes, for any model the CLI knows.

Runs a few warm-up steps, then profiles ``--profile-steps`` steps (objective: forward, loss and
backward; then Adam) with torch.profiler and prints the time per step split into the networks'
matrix products (mm/addmm/bmm/conv), the other tensor operations (the top ones by name), and
what no tensor operation accounts for (Python: Pyro's tracing, the guide and model code).

    python run/profile_step.py --model mfcvae --dataset mnist --data-dir ../shared/data [--profile-steps 20]

Every other flag is run/svi.py's (model settings, --batch-size, --guide, ...).
"""
import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from inference.training.loop import make_optimizer, parameters_of  # noqa: E402
from lvm_app.cli import parse  # noqa: E402
from lvm_app.training_run import run_context  # noqa: E402

MATRIX_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::convolution_backward",
              "aten::mkldnn_convolution", "aten::_convolution", "aten::_nnpack_spatial_convolution"}


def main(argv=None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--profile-steps", type=int, default=20)
    own.add_argument("--warmup-steps", type=int, default=5)
    ours, rest = own.parse_known_args(argv)
    _, experiment, args = parse(rest)
    ctx = run_context(experiment, args)
    data = experiment.load_data(ctx)
    ctx = ctx.replace(config=experiment.model_config(ctx, data))
    pyro.set_rng_seed(args.seed)
    built = experiment.build(ctx, data)
    batch_for_step = experiment.batches(ctx, data)
    schedule = experiment.schedule(ctx, built) or (lambda step: {})
    params = parameters_of(built.modules)
    optimizer = make_optimizer(params, ctx.lr)

    def step(i):
        optimizer.zero_grad(set_to_none=True)
        built.objective(batch_for_step(i), **schedule(i))
        optimizer.step()

    for i in range(ours.warmup_steps):
        step(i)
    n = ours.profile_steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for i in range(ours.warmup_steps, ours.warmup_steps + n):
            step(i)
        wall = (time.perf_counter() - started) / n * 1e3
    by_name = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            by_name[event.key] += event.self_cpu_time_total / 1e3 / n
    matrix = sum(t for name, t in by_name.items() if name in MATRIX_OPS)
    other = sum(t for name, t in by_name.items() if name not in MATRIX_OPS)
    print(f"{args.model} on {args.dataset}, batch {ctx.batch_size}, {torch.get_num_threads()} threads: "
          f"{wall:.1f} ms per step (profiled; the profiler adds a little)")
    print(f"  matrix products      {matrix:8.1f} ms  {100 * matrix / wall:5.1f}%")
    print(f"  other tensor ops     {other:8.1f} ms  {100 * other / wall:5.1f}%")
    print(f"  outside tensor ops   {wall - matrix - other:8.1f} ms  {100 * (wall - matrix - other) / wall:5.1f}%  "
          "(Python: Pyro tracing, model and guide code, the profiler)")
    print("  top other tensor ops:")
    for name, t in sorted(((k, v) for k, v in by_name.items() if k not in MATRIX_OPS), key=lambda kv: -kv[1])[:12]:
        print(f"    {name:32s} {t:7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
