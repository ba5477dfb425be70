#!/usr/bin/env python
"""Time per training step of CompILE at batch 512: the Pyro program through the runner's objective
(TraceMeanField_ELBO) against the same networks and loss written directly in PyTorch, in one
process, alternating blocks of steps (the machine is shared and noisy; run it under
``flock /tmp/cpu.lock``). A step = generate the batch + forward + backward + Adam.

    python run/bench_compile.py [--latent-dist gaussian] [--threads 1,2] [--rounds 7] [--block 10]
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import TraceMeanField_ELBO  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from inference import ElboObjective  # noqa: E402
from pyro_models.compile.data import SequenceSpec, training_batches  # noqa: E402
from pyro_models.compile.guide import CompILEGuide  # noqa: E402
from pyro_models.compile.model import (  # noqa: E402
    CompILE,
    CompILEConfig,
    SegmentedCategorical,
    boundary_prior_logits,
    next_remainder,
    position_masks,
    segment_weight,
    transition_support,
)


def plain_loss(model: CompILE, guide: CompILEGuide, tokens, lengths):
    """rec + beta KL of the Pyro program, without Pyro: Gumbel-softmax samples, analytic KLs."""
    cfg = model.config
    width = tokens.shape[-1]
    _, content = position_masks(lengths, width)
    support = transition_support(lengths, width)
    table = model.table(width)
    previous = F.one_hot(torch.zeros_like(lengths), width).float()
    remainder = content.float()
    kl = torch.zeros(())
    weights = []
    kl_weights = cfg.kl_weights()  # b_2.. weigh 0 with boundary_kl="first" (the default)

    def sample_boundary(i, logits):
        nonlocal kl, previous
        prior = boundary_prior_logits(previous, support, table).log_softmax(-1)
        log_q = logits.log_softmax(-1)
        if kl_weights[f"b_{i}"]:
            kl = kl + kl_weights[f"b_{i}"] * (log_q.exp() * (log_q - prior)).sum(-1).mean()
        previous = F.gumbel_softmax(logits, tau=cfg.temp_b)
        return previous

    def sample_code(i, params):
        nonlocal kl
        if cfg.latent_dist == "gaussian":
            loc, log_var = params.chunk(2, -1)
            kl = kl + cfg.beta_z * (-0.5 * (1 + log_var - loc ** 2 - log_var.exp()).sum(-1)).mean()
            return loc + (0.5 * log_var).exp() * torch.randn_like(loc)
        log_q = params.log_softmax(-1)
        kl = kl + cfg.beta_z * (log_q.exp() * (log_q + torch.log(torch.tensor(float(cfg.latent_dim))))).sum(-1).mean()
        return F.gumbel_softmax(params, tau=cfg.temp_z)

    boundaries, codes = guide._segments(tokens, lengths, sample_boundary, sample_code)
    for b in boundaries:
        weights.append(segment_weight(remainder, b))
        remainder = next_remainder(remainder, b)
    rec = SegmentedCategorical(model.decoder(torch.stack(codes, -2)), torch.stack(weights, -2)).log_prob(tokens)
    return -rec.mean() + kl


def bench(latent_dist: str, threads: int, rounds: int, block: int) -> dict:
    torch.set_num_threads(threads)
    pyro.set_rng_seed(0)
    config = CompILEConfig(latent_dist=latent_dist)
    model, guide = CompILE(config), CompILEGuide(config)
    params = [*model.parameters(), *guide.parameters()]
    objective = ElboObjective(TraceMeanField_ELBO(), model.model, guide.guide)
    batches = training_batches(SequenceSpec(), 512, seed=0)
    scales = {"latent_scales": config.kl_weights()}
    pyro_opt, plain_opt = torch.optim.Adam(params, lr=1e-2), torch.optim.Adam(params, lr=1e-2)

    def pyro_step(step):
        pyro_opt.zero_grad(set_to_none=True)
        objective(batches(step), **scales)
        pyro_opt.step()

    def plain_step(step):
        plain_opt.zero_grad(set_to_none=True)
        plain_loss(model, guide, **batches(step)).backward()
        plain_opt.step()

    def timed(step_fn, start):
        began = time.perf_counter()
        for s in range(start, start + block):
            step_fn(s)
        return (time.perf_counter() - began) / block

    timed(pyro_step, 0), timed(plain_step, 0)  # warm up
    times = {"pyro": [], "plain": []}
    for r in range(rounds):
        times["pyro"].append(timed(pyro_step, r * block))
        times["plain"].append(timed(plain_step, r * block))
    result = {"latent_dist": latent_dist, "threads": threads, "batch_size": 512, "block": block}
    for name, ts in times.items():
        result[f"{name}_step_s_median"] = statistics.median(ts)
        result[f"{name}_step_s_min"], result[f"{name}_step_s_max"] = min(ts), max(ts)
    result["pyro_over_plain"] = result["pyro_step_s_median"] / result["plain_step_s_median"]
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latent-dist", default="gaussian", choices=["gaussian", "concrete"])
    parser.add_argument("--threads", default="1,2", help="torch intra-op thread counts to try")
    parser.add_argument("--rounds", type=int, default=7, help="alternating blocks per variant")
    parser.add_argument("--block", type=int, default=10, help="steps per block")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    results = []
    for threads in (int(t) for t in args.threads.split(",")):
        r = bench(args.latent_dist, threads, args.rounds, args.block)
        results.append(r)
        print(f"{r['latent_dist']}, {threads} thread(s), batch 512: Pyro {r['pyro_step_s_median']:.3f} s/step "
              f"(blocks {r['pyro_step_s_min']:.3f}-{r['pyro_step_s_max']:.3f}), plain PyTorch "
              f"{r['plain_step_s_median']:.3f} s/step ({r['plain_step_s_min']:.3f}-{r['plain_step_s_max']:.3f}), "
              f"ratio {r['pyro_over_plain']:.2f} (target: <= 0.21 s/step)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
