#!/usr/bin/env python
"""AIS throughput, as ratios measured in one process (the machine is shared and noisy).

Runs ``inference.ais.ais`` on the VAE of Cremer et al. (decoder 50-200-200-784; a trained run's
weights and training points with --checkpoint, else the untrained network on random images)
and reports leapfrog steps x chains x points per second, pilot chains included, and the GFLOP/s
of decoder work (forward and gradient with respect to z: 2 x 2 x multiply-adds per row) against
the float32 matmul peak measured in the same process, alternating blocks of each.

    python run/bench_ais.py [--checkpoint RUN_DIR] [--points 50] [--chains 16] [--steps 200] [--threads 1]

The same file runs against an older checkout (copied into its run/) to compare before and after.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from inference.ais import AISSettings, ais  # noqa: E402
from pyro_models import VAE, VAEConfig  # noqa: E402
from pyro_models.networks import linear_flops  # noqa: E402


def matmul_seconds(n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    started = time.perf_counter()
    a @ b
    return time.perf_counter() - started


def model_and_points(checkpoint: str | None, points: int):
    """The run's model and its first training points, or the untrained VAE and random binary images."""
    if checkpoint is None:
        torch.manual_seed(0)
        model = VAE(VAEConfig())
        return model, torch.bernoulli(torch.full((points, model.config.data_dim), 0.2))
    from lvm_app.run_dir import load_run

    run = load_run(checkpoint)
    return run.built.model, run.experiment.evaluation_points(run.ctx, run.data, points, "train")["x"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="run/bench_ais.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a VAE run directory (default: the untrained network)")
    p.add_argument("--points", type=int, default=50)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--leapfrog", type=int, default=5)
    p.add_argument("--blocks", type=int, default=3, help="alternating AIS / matmul blocks (default: 3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, x = model_and_points(args.checkpoint, args.points)
    settings = AISSettings(num_steps=args.steps, num_chains=args.chains, leapfrog_steps=args.leapfrog)
    ais(model.model, {"x": x[:2]}, AISSettings(num_steps=3, num_chains=2, leapfrog_steps=2))  # warm-up
    rates, peaks, pilot_shares = [], [], []  # pilot share: of the rows
    flops_per_row = 2 * linear_flops(model.decoder)  # forward + gradient with respect to z
    for _ in range(args.blocks):
        started = time.perf_counter()
        result = ais(model.model, {"x": x}, settings)
        wall = time.perf_counter() - started
        rows = result.row_evals + getattr(result, "pilot_row_evals", 0)
        rates.append(rows / wall)
        pilot_shares.append(getattr(result, "pilot_row_evals", 0) / rows)
        peaks.append(2 * 1024 ** 3 / min(matmul_seconds() for _ in range(5)) / 1e9)
    rate, peak = statistics.median(rates), statistics.median(peaks)
    gflops = rate * flops_per_row / 1e9
    report = {"rows_per_s": rate, "decoder_gflops_per_s": gflops, "matmul_peak_gflops": peak,
              "fraction_of_peak": gflops / peak, "pilot_share_of_rows": statistics.median(pilot_shares),
              "settings": vars(args)}
    print(f"AIS: {rate:.0f} leapfrog steps x chains x points / s (pilot chains included; "
          f"{100 * report['pilot_share_of_rows']:.0f}% of them pilot rows), {gflops:.1f} GFLOP/s of "
          f"decoder work = {100 * gflops / peak:.0f}% of the {peak:.0f} GFLOP/s matmul peak measured alongside")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
