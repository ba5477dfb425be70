#!/usr/bin/env python
"""AIS against the exact log p(x) of probabilistic PCA: is it a lower bound, and how close?

The model of the outside check that found the old AIS above the truth: x in R^5, z in R^2,
W, b ~ N(0, 1), noise 0.5, 20 points per replicate drawn from the model
(``pyro_models.ppca.ReplicatedPPCA``). For each chain length, mean(AIS - exact) over the
replicates with its standard error, and the mean of w / p(x) over every chain (AIS promises 1).
Prints a markdown table (the README's).

    python run/ais_check.py [--steps 300,1000,3000] [--replicates 8] [--chains 16] [--leapfrog 5]
"""
import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from inference.ais import AISSettings, ais  # noqa: E402
from pyro_models.ppca import ReplicatedPPCA  # noqa: E402


def positive_ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The parser of the command line (the reproducibility test parses its documented commands)."""
    p = argparse.ArgumentParser(prog="run/ais_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=positive_ints, default=[300, 1000, 3000],
                   help="chain lengths (default: 300,1000,3000)")
    p.add_argument("--replicates", type=int, default=8, help="independent replicates (W, b, points; default: 8)")
    p.add_argument("--points", type=int, default=20, help="points per replicate (default: 20)")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.replicates < 2:
        p.error("--replicates must be at least 2 (the standard error comes from their spread)")
    torch.set_num_threads(args.threads)
    ppca = ReplicatedPPCA(args.replicates, args.points, data_dim=5, latent_dim=2, noise=0.5, seed=args.seed)
    exact = ppca.log_marginal().double()
    print(f"| AIS steps | mean(AIS - exact), nats (± s.e. over {args.replicates} replicates) | "
          "mean of w / p(x) (± s.e.) | acceptance | wall s |")
    print("|---|---|---|---|---|")
    for steps in args.steps:
        torch.manual_seed(args.seed + steps)
        result = ais(ppca.model, ppca.batch(), AISSettings(num_steps=steps, num_chains=args.chains,
                                                           leapfrog_steps=args.leapfrog))
        errors = ppca.per_replicate(result.log_px.double() - exact)
        ratio = (result.log_weights.double() - exact).exp()
        print(f"| {steps} | {errors.mean():+.4f} ± {errors.std() / math.sqrt(errors.numel()):.4f} | "
              f"{ratio.mean():.3f} ± {ratio.std() / math.sqrt(ratio.numel()):.3f} | {result.accept_rate:.2f} | "
              f"{result.wall_s:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
