#!/usr/bin/env python
"""Benchmarks, measured as ratios within one process (the machine is shared and noisy).

1. A training step of the Pyro VAE (model + amortised FFG guide + Trace_ELBO, through the
   runner's objective) against a hand-written PyTorch VAE with the same networks, batch,
   single-sample ELBO and Adam. Blocks of steps alternate between the two; medians are compared.
2. The importance-sampling evaluator's throughput, in GFLOP/s of decoder matrix work, next to
   the float32 matmul peak measured in the same process.

    python run/bench.py [--batch-size 100] [--iwae-points 500] [--iwae-k 1000] [--out bench.json]
"""
import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from guides import MeanFieldNormal, build_guide  # noqa: E402
from inference import ElboObjective, evaluate_importance  # noqa: E402
from inference.throughput import matmul_peak_gflops  # noqa: E402
from pyro_models import VAE, VAEConfig  # noqa: E402
from pyro_models.networks import linear_flops  # noqa: E402

LOG_2PI = math.log(2 * math.pi)


class PlainVAE(nn.Module):
    """The same networks and loss, written directly in PyTorch."""

    def __init__(self, pyro_vae: VAE, guide):
        super().__init__()
        self.decoder = pyro_vae.decoder
        self.encoder = guide.source.encoder
        self.head = guide.source.head
        self.latent_dim = pyro_vae.config.latent_dim

    def loss(self, x):
        loc, raw_scale = self.head(self.encoder(x=x)).split(self.latent_dim, dim=-1)
        scale = nn.functional.softplus(raw_scale) + MeanFieldNormal.min_scale
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        logits = self.decoder(z)
        log_px = (x * logits - logits.clamp(min=0) - torch.log(1 + torch.exp(-logits.abs()))).sum(-1)
        log_pz = -0.5 * (z ** 2 + LOG_2PI).sum(-1)
        log_qz = (-0.5 * (eps ** 2 + LOG_2PI) - scale.log()).sum(-1)
        return -(log_px + log_pz - log_qz).mean()


def time_steps(step, x_batches, n_steps):
    start = time.perf_counter()
    for i in range(n_steps):
        step(x_batches[i % len(x_batches)])
    return (time.perf_counter() - start) / n_steps


def bench_training_step(batch_size: int, rounds: int, block: int, data_dim: int = 784) -> dict:
    pyro.set_rng_seed(0)
    vae = VAE(VAEConfig(data_dim=data_dim))
    encoder, encoder_dim = vae.make_encoder()
    guide = build_guide(MeanFieldNormal, vae.latent_sites, encoder=encoder, encoder_dim=encoder_dim)
    objective = ElboObjective(pyro.infer.Trace_ELBO(), vae.model, guide)
    params = list(vae.parameters()) + list(guide.parameters())
    plain = PlainVAE(vae, guide)
    pyro_opt, plain_opt = torch.optim.Adam(params, lr=1e-4), torch.optim.Adam(params, lr=1e-4)
    x_batches = [torch.bernoulli(torch.full((batch_size, data_dim), 0.13)) for _ in range(8)]

    def pyro_step(x):
        pyro_opt.zero_grad(set_to_none=True)
        objective({"x": x})
        pyro_opt.step()

    def plain_step(x):
        plain_opt.zero_grad(set_to_none=True)
        plain.loss(x).backward()
        plain_opt.step()

    for step in (pyro_step, plain_step):
        time_steps(step, x_batches, 30)  # warm up
    pyro_times, plain_times = [], []
    for _ in range(rounds):
        pyro_times.append(time_steps(pyro_step, x_batches, block))
        plain_times.append(time_steps(plain_step, x_batches, block))
    pyro_ms, plain_ms = statistics.median(pyro_times) * 1e3, statistics.median(plain_times) * 1e3
    return {"batch_size": batch_size, "pyro_step_ms": pyro_ms, "plain_step_ms": plain_ms,
            "pyro_over_plain": pyro_ms / plain_ms}


def bench_iwae(points: int, k: int, max_rows: int, data_dim: int = 784) -> dict:
    pyro.set_rng_seed(0)
    vae = VAE(VAEConfig(data_dim=data_dim))
    encoder, encoder_dim = vae.make_encoder()
    guide = build_guide(MeanFieldNormal, vae.latent_sites, encoder=encoder, encoder_dim=encoder_dim)
    x = torch.bernoulli(torch.full((points, data_dim), 0.13))
    evaluate_importance(vae.model, guide, {"x": x[:10]}, 100, max_rows=max_rows)  # warm up
    start = time.perf_counter()
    evaluate_importance(vae.model, guide, {"x": x}, k, max_rows=max_rows)
    seconds = time.perf_counter() - start
    flops = points * k * linear_flops(vae.decoder)
    return {"points": points, "k": k, "max_rows": max_rows, "seconds": seconds,
            "decoder_gflops_per_s": flops / seconds / 1e9}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15, help="alternating blocks per variant")
    parser.add_argument("--block", type=int, default=40, help="steps per block")
    parser.add_argument("--iwae-points", type=int, default=500)
    parser.add_argument("--iwae-k", type=int, default=1000)
    parser.add_argument("--max-rows", type=int, default=None, help="evaluator chunk (default: its own)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {"torch_threads": torch.get_num_threads()}
    results["step"] = bench_training_step(args.batch_size, args.rounds, args.block)
    step = results["step"]
    print(f"training step, batch {args.batch_size}: Pyro {step['pyro_step_ms']:.2f} ms, plain PyTorch "
          f"{step['plain_step_ms']:.2f} ms, ratio {step['pyro_over_plain']:.3f} (target <= 1.15)")
    peak = matmul_peak_gflops(2048, 10)
    kwargs = {} if args.max_rows is None else {"max_rows": args.max_rows}
    iwae = bench_iwae(args.iwae_points, args.iwae_k, **{"max_rows": 32768, **kwargs})
    peak = max(peak, matmul_peak_gflops(2048, 10))  # measured before and after, best of both
    results.update({"matmul_peak_gflops_per_s": peak, "iwae": iwae,
                    "iwae_fraction_of_peak": iwae["decoder_gflops_per_s"] / peak})
    print(f"IWAE evaluator: {iwae['points']} points x K={iwae['k']} in {iwae['seconds']:.1f} s, "
          f"{iwae['decoder_gflops_per_s']:.1f} GFLOP/s of decoder work = "
          f"{100 * results['iwae_fraction_of_peak']:.0f}% of the measured matmul peak {peak:.1f} GFLOP/s (target >= 50%)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
