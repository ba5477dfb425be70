#!/usr/bin/env python
"""Benchmarks of the VAE of Cremer et al., measured as ratios within one process (the machine is
shared and noisy), eager and compiled (``pyro_models.compilation.compile_networks``):

1. A training step (batch 100): the Pyro VAE (model + amortised FFG guide + Trace_ELBO, through the
   runner's objective and optimiser) against the same networks, loss and optimiser written directly
   in PyTorch. Blocks of steps alternate between the variants; medians are compared.
2. The importance-sampling evaluator (IWAE) and AIS: GFLOP/s of decoder matrix work next to the
   float32 matmul peak measured in the same process.

    python run/bench.py [--threads 1,2] [--batch-size 100] [--iwae-points 200] [--out bench.json]

The compiled variants pay their compile time before timing (reported as ``compile_s``).
"""
import argparse
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
from inference.ais import AISSettings, ais  # noqa: E402
from inference.throughput import matmul_peak_gflops  # noqa: E402
from inference.training.loop import make_optimizer  # noqa: E402
from inference.training.run_files import write_json  # noqa: E402
from pyro_models import VAE, VAEConfig  # noqa: E402
from pyro_models.compilation import compile_networks, set_compiled_likelihoods  # noqa: E402
from pyro_models.core import registered_once  # noqa: E402
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


def vae_and_guide(data_dim: int = 784):
    pyro.set_rng_seed(0)
    vae = VAE(VAEConfig(data_dim=data_dim))
    encoder, encoder_dim = vae.make_encoder()
    return vae, build_guide(MeanFieldNormal, vae.latent_sites, encoder=encoder, encoder_dim=encoder_dim)


class Variant:
    """One way of running a workload: eager or compiled networks (and likelihoods)."""

    def __init__(self, compiled: bool, vae, guide):
        self.compiled, self.vae, self.guide, self.compile_s = compiled, vae, guide, 0.0
        if compiled:
            started = time.perf_counter()
            compile_networks(vae, guide)
            self.compile_s = time.perf_counter() - started  # the rest is paid on the first calls

    def __enter__(self):
        set_compiled_likelihoods(self.compiled)  # the likelihood switch is process-wide
        return self

    def __exit__(self, *exc):
        set_compiled_likelihoods(False)


def twin_variants():
    """An eager and a compiled VAE + guide with the same parameters."""
    eager, compiled = vae_and_guide(), vae_and_guide()
    for a, b in zip(eager, compiled):
        b.load_state_dict(a.state_dict())
    return Variant(False, *eager), Variant(True, *compiled)


def bench_training_step(batch_size: int, rounds: int, block: int) -> dict:
    eager, compiled = twin_variants()
    x_batches = [torch.bernoulli(torch.full((batch_size, 784), 0.13)) for _ in range(8)]
    steps = {}
    for variant in (eager, compiled):
        tag = "compiled" if variant.compiled else "eager"
        params = list(variant.vae.parameters()) + list(variant.guide.parameters())
        objective = ElboObjective(pyro.infer.Trace_ELBO(), variant.vae.model, variant.guide)
        plain = PlainVAE(variant.vae, variant.guide)
        pyro_opt, plain_opt = make_optimizer(params, 1e-4), make_optimizer(params, 1e-4)

        def pyro_step(x, objective=objective, opt=pyro_opt):
            opt.zero_grad(set_to_none=True)
            objective({"x": x})
            opt.step()

        def plain_step(x, plain=plain, opt=plain_opt):
            opt.zero_grad(set_to_none=True)
            plain.loss(x).backward()
            opt.step()

        steps[f"pyro_{tag}"], steps[f"plain_{tag}"] = (variant, pyro_step), (variant, plain_step)
    started = time.perf_counter()
    for variant, step in steps.values():
        with variant, registered_once():  # as the runner's loop registers the modules with Pyro
            time_steps(step, x_batches, 30)  # warm up (and compile)
    warm_up_s = time.perf_counter() - started
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, (variant, step) in steps.items():
            with variant, registered_once():
                times[name].append(time_steps(step, x_batches, block))
    ms = {f"{name}_step_ms": statistics.median(t) * 1e3 for name, t in times.items()}
    return {"batch_size": batch_size, **ms, "warm_up_and_compile_s": warm_up_s,
            "pyro_over_plain_eager": ms["pyro_eager_step_ms"] / ms["plain_eager_step_ms"],
            "pyro_over_plain_compiled": ms["pyro_compiled_step_ms"] / ms["plain_compiled_step_ms"],
            "pyro_compiled_over_plain_eager": ms["pyro_compiled_step_ms"] / ms["plain_eager_step_ms"]}


def time_steps(step, x_batches, n_steps):
    start = time.perf_counter()
    for i in range(n_steps):
        step(x_batches[i % len(x_batches)])
    return (time.perf_counter() - start) / n_steps


def bench_estimators(points: int, k: int, max_rows: int, ais_settings: AISSettings, blocks: int) -> dict:
    """IWAE-k and AIS on ``points`` random images, eager and compiled, alternating blocks; GFLOP/s
    of decoder work (AIS: forward and gradient with respect to z) and the matmul peak alongside."""
    x = torch.bernoulli(torch.full((points, 784), 0.13))
    variants, rates, peaks = twin_variants(), {}, []
    for variant in variants:
        with variant:  # warm up (and compile: the evaluator's chunk shapes, then AIS's)
            for _ in range(2):
                evaluate_importance(variant.vae.model, variant.guide, {"x": x}, k, max_rows=max_rows)
                ais(variant.vae.model, {"x": x}, AISSettings(num_steps=3, num_chains=ais_settings.num_chains,
                                                             leapfrog_steps=2))
    decoder_flops = linear_flops(variants[0].vae.decoder)
    for _ in range(blocks):
        peaks.append(matmul_peak_gflops(2048, 5))
        for variant in variants:
            tag = "compiled" if variant.compiled else "eager"
            with variant:
                started = time.perf_counter()
                evaluate_importance(variant.vae.model, variant.guide, {"x": x}, k, max_rows=max_rows)
                rates.setdefault(f"iwae_{tag}", []).append(points * k * decoder_flops / (time.perf_counter() - started))
                started = time.perf_counter()
                result = ais(variant.vae.model, {"x": x}, ais_settings)
                rows = result.row_evals + getattr(result, "pilot_row_evals", 0)
                rates.setdefault(f"ais_{tag}", []).append(rows * 2 * decoder_flops / (time.perf_counter() - started))
    peak, out = max(peaks), {}
    for name, values in rates.items():
        out[f"{name}_gflops_per_s"] = statistics.median(values) / 1e9
        out[f"{name}_fraction_of_peak"] = out[f"{name}_gflops_per_s"] / peak
    return {"points": points, "iwae_k": k, "max_rows": max_rows, "ais": vars(ais_settings),
            "matmul_peak_gflops_per_s": peak, **out}


def build_parser() -> argparse.ArgumentParser:
    """The parser of the command line (the reproducibility test parses its documented commands)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="torch intra-op thread counts to measure (default: 1,2)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=9, help="alternating blocks per variant")
    parser.add_argument("--block", type=int, default=40, help="steps per block")
    parser.add_argument("--iwae-points", type=int, default=200)
    parser.add_argument("--iwae-k", type=int, default=1000)
    parser.add_argument("--max-rows", type=int, default=8192, help="particles x points per evaluator pass")
    parser.add_argument("--ais-steps", type=int, default=100)
    parser.add_argument("--ais-chains", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=3, help="alternating estimator blocks")
    parser.add_argument("--skip-step", action="store_true", help="only the estimators")
    parser.add_argument("--skip-estimators", action="store_true", help="only the training step")
    parser.add_argument("--out", help="also write the results as JSON here")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    results = {}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        r = results[f"threads_{threads}"] = {}
        if not args.skip_step:
            step = r["step"] = bench_training_step(args.batch_size, args.rounds, args.block)
            print(f"[{threads} thread(s)] training step, batch {args.batch_size}: Pyro eager {step['pyro_eager_step_ms']:.2f} ms, "
                  f"plain eager {step['plain_eager_step_ms']:.2f} ms (ratio {step['pyro_over_plain_eager']:.3f}, target <= 1.05); "
                  f"Pyro compiled {step['pyro_compiled_step_ms']:.2f} ms, plain compiled {step['plain_compiled_step_ms']:.2f} ms "
                  f"(ratio {step['pyro_over_plain_compiled']:.3f}); Pyro compiled / plain eager "
                  f"{step['pyro_compiled_over_plain_eager']:.3f} (target <= 0.6)", flush=True)
        if args.skip_estimators:
            continue
        est = r["estimators"] = bench_estimators(args.iwae_points, args.iwae_k, args.max_rows,
                                                 AISSettings(num_steps=args.ais_steps, num_chains=args.ais_chains,
                                                             leapfrog_steps=5), args.blocks)
        for name in ("iwae", "ais"):
            print(f"[{threads} thread(s)] {name.upper()}: eager {est[f'{name}_eager_gflops_per_s']:.1f} GFLOP/s "
                  f"({100 * est[f'{name}_eager_fraction_of_peak']:.0f}% of the {est['matmul_peak_gflops_per_s']:.0f} GFLOP/s "
                  f"matmul peak), compiled {est[f'{name}_compiled_gflops_per_s']:.1f} GFLOP/s "
                  f"({100 * est[f'{name}_compiled_fraction_of_peak']:.0f}%; target >= 50%)", flush=True)
    if args.out:
        write_json(Path(args.out), results)  # atomically, never through a link
    return results


if __name__ == "__main__":
    main()
