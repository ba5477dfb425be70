#!/usr/bin/env python
"""Data-parallel training speed: one process against ``torchrun --nproc_per_node 2``.

Trains the same run three ways, one after the other (the machine is shared and noisy: compare
the ratios, and repeat with --repeats): one process unsharded (the default loop), one process
with --shards 2 (the sharded loop's own cost), and two processes with --shards 2 (gloo on the CPU,
DistributedDataParallel). Reports steps/s, samples/s and the scaling efficiency, speed with 2
processes / (2 x speed with 1), from the training time in each run's metrics.csv (the time of
the first logged steps, start-up and process-group set-up, is left out).

On a 2-core CPU machine this measures the overhead of the machinery (a gradient all-reduce per
step, the shards' smaller matrix products), not what a node of GPUs would do.

    python run/bench_ddp.py [--model vae --dataset binarized_mnist --steps 400 --batch-size 100]
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(label: str, launcher: list, args, out: Path) -> dict:
    flags = ["--model", args.model, "--dataset", args.dataset, "--steps", str(args.steps), "--batch-size",
             str(args.batch_size), "--log-every", str(args.steps // 4), "--out", str(out), "--no-progress",
             *args.extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run([*launcher, str(ROOT / "run" / "svi.py"), *flags], capture_output=True, text=True,
                            cwd=ROOT, env=env)
    if result.returncode != 0:
        sys.exit(f"run/bench_ddp.py: the {label} run failed:\n{result.stderr[-2000:]}")
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    first, last = rows[0], rows[-1]  # time from the first log row on: no start-up
    steps = int(last["step"]) - int(first["step"])
    seconds = float(last["elapsed_s"]) - float(first["elapsed_s"])
    return {"run": label, "steps_per_s": steps / seconds, "samples_per_s": steps * args.batch_size / seconds}


def build_parser() -> argparse.ArgumentParser:
    """The parser of the command line (the reproducibility test parses its documented commands)."""
    p = argparse.ArgumentParser(prog="run/bench_ddp.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vae")
    p.add_argument("--dataset", default="binarized_mnist")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default: 1)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of the three runs (medians reported)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("extra", nargs="*", help="more run/svi.py flags, after --")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.steps < 8:
        p.error("--steps must be at least 8")
    one = [sys.executable]
    two = ["torchrun", "--standalone", "--nproc_per_node", "2"]
    results = {"unsharded, 1 process": [], "--shards 2, 1 process": [], "--shards 2, 2 processes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for label, launcher, shards in (("unsharded, 1 process", one, []),
                                            ("--shards 2, 1 process", one, ["--shards", "2"]),
                                            ("--shards 2, 2 processes", two, ["--shards", "2"])):
                run_args = argparse.Namespace(**{**vars(args), "extra": [*args.extra, *shards]})
                results[label].append(run(label, launcher, run_args, Path(tmp) / f"{r}-{len(shards)}-{len(launcher)}"))
    table = {label: {key: statistics.median(row[key] for row in rows) for key in ("steps_per_s", "samples_per_s")}
             for label, rows in results.items()}
    base = table["unsharded, 1 process"]["samples_per_s"]
    summary = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "speed": table,
               "scaling_efficiency": table["--shards 2, 2 processes"]["samples_per_s"] / (2 * base),
               "sharding_cost": table["--shards 2, 1 process"]["samples_per_s"] / base,
               "cores": os.cpu_count()}
    print("| run | steps/s | samples/s |\n|---|---|---|")
    for label, row in table.items():
        print(f"| {label} | {row['steps_per_s']:.1f} | {row['samples_per_s']:.0f} |")
    print(f"scaling efficiency (2 processes / twice 1 unsharded): {summary['scaling_efficiency']:.2f}; "
          f"--shards 2 in one process runs at {summary['sharding_cost']:.2f} of the unsharded speed")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
