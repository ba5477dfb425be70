#!/usr/bin/env python
"""Where a CPC training step's time goes, and the training throughput in seconds of audio per second.

Times each phase of ``--steps`` steps on real FSDD training windows (after 2 warm-up steps):
encoder forward, GRU forward, W_k predictions + InfoNCE, backward, Adam; then runs torch.profiler
over 3 steps and prints the operations that take the most time.

    python run/profile_cpc.py --data-dir ../shared/data --width 128 [--threads 1] [--steps 10]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from inference.infonce import MODES, info_nce  # noqa: E402
from pyro_models.cpc.data import SAMPLE_RATE, WindowBatches, load_fsdd  # noqa: E402
from pyro_models.cpc.model import CPC, CPCConfig  # noqa: E402
from pyro_models.datasets import DataDir, DataError  # noqa: E402

PHASES = ("encoder forward", "GRU forward", "W_k + InfoNCE", "backward", "Adam")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="run/profile_cpc.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="data directory with fsdd/ (default: $PYRO_MODELS_DATA, else the cache)")
    parser.add_argument("--width", type=positive_int, default=128, help="encoder channels (default: 128)")
    parser.add_argument("--context-dim", type=positive_int, default=256, help="GRU size (default: 256)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="windows per step (default: 32)")
    parser.add_argument("--window", type=positive_int, default=4000, help="samples per window (default: 4000)")
    parser.add_argument("--negatives", choices=MODES, default="both", help="InfoNCE negatives (default: both)")
    parser.add_argument("--num-negatives", type=int, default=0, help="0: every eligible one (default)")
    parser.add_argument("--steps", type=positive_int, default=10, help="timed steps (default: 10)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default: 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        corpus = load_fsdd(DataDir(args.data_dir))
        batches = WindowBatches(corpus.train, args.window, args.batch_size, seed=0)
    except (DataError, ValueError) as error:
        print(f"run/profile_cpc.py: error: {error}", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    model = CPC(CPCConfig(width=args.width, context_dim=args.context_dim))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)

    def step(i, times=None):
        wave = batches(i)["wave"]
        marks = [time.perf_counter()]
        z = model.encode(wave)
        marks.append(time.perf_counter())
        c = model.context(z)
        marks.append(time.perf_counter())
        loss = info_nce(model.predict(c), z, args.negatives, args.num_negatives).loss
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        if times is not None:
            for name, a, b in zip(PHASES, marks, marks[1:]):
                times[name] = times.get(name, 0.0) + b - a

    for i in range(2):
        step(i)
    times = {}
    for i in range(args.steps):
        step(2 + i, times)
    total = sum(times.values())
    audio = args.batch_size * args.window / SAMPLE_RATE
    print(f"width {args.width}, GRU {args.context_dim}, batch {args.batch_size} x {args.window} samples "
          f"({audio:.1f} s of audio), {args.threads} thread(s), negatives {args.negatives}/{args.num_negatives or 'all'}")
    for name in PHASES:
        print(f"  {name:<16} {1000 * times[name] / args.steps:8.1f} ms/step  {100 * times[name] / total:5.1f}%")
    print(f"  {'total':<16} {1000 * total / args.steps:8.1f} ms/step  -> {audio * args.steps / total:.1f} s of audio per second")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(3):
            step(100 + i)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
