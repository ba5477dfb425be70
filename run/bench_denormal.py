#!/usr/bin/env python
"""Subnormal floats: CompILE's training step (batch 512, the runner's objective and optimiser) at
steps 1-20 against steps 81-100, with ``torch.set_flush_denormal`` off and on, each in its own
process (the setting is process-wide), and the loss at step 100 of each (does flushing change the
run?). The medians of the two windows are compared within one process.

    python run/bench_denormal.py [--latent-dist gaussian,concrete] [--threads 1] [--steps 100]
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.training.run_files import write_json  # noqa: E402


def one_run(latent_dist: str, flush: bool, steps: int, threads: int) -> dict:
    import pyro
    import torch
    from pyro.infer import TraceMeanField_ELBO

    from inference import ElboObjective
    from inference.training.loop import make_optimizer
    from pyro_models.compile.data import SequenceSpec, training_batches
    from pyro_models.compile.guide import CompILEGuide
    from pyro_models.compile.model import CompILE, CompILEConfig

    torch.set_num_threads(threads)
    torch.set_flush_denormal(flush)
    pyro.set_rng_seed(0)
    config = CompILEConfig(latent_dist=latent_dist)
    model, guide = CompILE(config), CompILEGuide(config)
    optimizer = make_optimizer([*model.parameters(), *guide.parameters()], 1e-2)
    objective = ElboObjective(TraceMeanField_ELBO(), model.model, guide.guide)
    batches = training_batches(SequenceSpec(), 512, seed=0)
    scales = {"latent_scales": config.kl_weights()}
    seconds, loss = [], None
    for step in range(steps):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = objective(batches(step), **scales)
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    early, late = statistics.median(seconds[:20]), statistics.median(seconds[-20:])
    return {"latent_dist": latent_dist, "flush_denormal": flush, "threads": threads, "early_step_ms": 1e3 * early,
            "late_step_ms": 1e3 * late, "late_over_early": late / early, "loss_last_step": loss}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="run/bench_denormal.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--latent-dist", default="gaussian,concrete")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--one", help=argparse.SUPPRESS)  # "latent_dist,flush": one run, in this process
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.one:
        latent_dist, flush = args.one.split(",")
        print(json.dumps(one_run(latent_dist, flush == "on", args.steps, args.threads)))
        return 0
    results = []
    for latent_dist in args.latent_dist.split(","):
        for flush in ("off", "on"):
            line = subprocess.run([sys.executable, __file__, "--one", f"{latent_dist},{flush}", "--steps",
                                   str(args.steps), "--threads", str(args.threads)],
                                  check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            r = json.loads(line)
            results.append(r)
            print(f"{latent_dist}, flush {flush}: steps 1-20 {r['early_step_ms']:.0f} ms, last 20 "
                  f"{r['late_step_ms']:.0f} ms (x{r['late_over_early']:.2f}); loss at the last step "
                  f"{r['loss_last_step']:.6f}", flush=True)
    if args.out:
        write_json(Path(args.out), results)  # atomically, never through a link
    return 0


if __name__ == "__main__":
    sys.exit(main())
