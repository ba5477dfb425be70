#!/usr/bin/env python
"""Signal-to-noise ratio of the guide's IWAE-K gradient, standard vs DReG, as K grows.

    python run/grad_snr.py [--run DIR] [--k 1,10,50] [--draws 100] [--batch-size 16] [--out FILE.json]

Takes a fixed batch (the first ``--batch-size`` test points) and, for each K and each estimator
(``inference.IwaeObjective`` with ``gradient="standard"`` and ``"dreg"``), draws the gradient of
the per-point loss ``--draws`` times with fresh particles. For every coordinate of the guide's
parameters it computes SNR = |mean| / std over the draws, then averages over the coordinates
(coordinates whose gradient is exactly 0 in every draw, e.g. the weights of pixels that are 0 in
the whole batch, are left out) and reports the median too. The model's (decoder's) SNR is shown
for reference: its gradient is the same for both estimators (Rainforth et al. 2018, "Tighter
variational bounds are not necessarily better": the standard guide SNR falls like 1/sqrt(K),
the model's rises; Tucker et al. 2019: DReG's guide SNR does not fall).

Without ``--run`` the model is a freshly initialised VAE (``--model vae``'s defaults, guide
``--guide``) on binarised MNIST from the data directory (``--data-dir``, else
``$PYRO_MODELS_DATA``); with ``--run`` it is a trained ``run/svi.py`` run of a continuous-latent
model (its data set and guide). Prints a table and writes JSON (default: ``grad_snr.json`` in
the run directory, else in the current directory).
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro
import torch
from tqdm.auto import tqdm

from inference import IwaeObjective
from inference.iwae_objective import GRADIENTS
from pyro_models.datasets import DataDir
from pyro_models.datasets.vector_data import as_float


class Moments:
    """Running mean and variance per coordinate (Welford), so no draw is kept."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, value: torch.Tensor) -> None:
        value = value.double()
        self.count += 1
        if self.mean is None:
            self.mean, self.m2 = value.clone(), torch.zeros_like(value)
            return
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)

    def snr(self) -> dict:
        std = (self.m2 / (self.count - 1)).sqrt()
        live = std > 0
        ratio = self.mean[live].abs() / std[live]
        return {"snr_mean": ratio.mean().item(), "snr_median": ratio.median().item(),
                "coordinates": int(live.sum()), "total_variance": std[live].pow(2).sum().item()}


def flat_grad(params) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def load(args):
    """(model program, guide, model module, fixed batch, description)."""
    if args.run:
        from lvm_app.run_dir import load_run

        run = load_run(args.run, args.data_dir)
        built, experiment = run.built, run.experiment
        x = as_float(run.data.test[:args.batch_size])
        return experiment.model_program(built), built.guide, built.model, x, f"run {args.run} (step {run.step})"
    from pyro_models.vae.experiment import VAEExperiment

    experiment = VAEExperiment()
    ctx = experiment.context(dataset=args.dataset, guide=args.guide, data_dir=DataDir(args.data_dir))
    data = experiment.load_data(ctx)
    pyro.set_rng_seed(args.seed)
    built = experiment.build(ctx.replace(config=experiment.model_config(ctx, data)), data)
    x = as_float(data.test[:args.batch_size])
    return (experiment.model_program(built), built.guide, built.model, x,
            f"freshly initialised VAE (seed {args.seed}), {args.guide} guide, {args.dataset}")


def measure(program, guide, model, x, k: int, gradient: str, draws: int, seed: int, progress: bool) -> dict:
    objective = IwaeObjective(program, guide, k, gradient=gradient, max_plate_nesting=model.max_plate_nesting,
                              data_plate=model.plate_name)
    guide_params = [p for p in guide.parameters() if p.requires_grad]
    owned = {id(p) for p in guide_params}
    model_params = [p for p in model.parameters() if p.requires_grad and id(p) not in owned]
    guide_moments, model_moments, losses = Moments(), Moments(), []
    pyro.set_rng_seed(seed)  # the same particles for both estimators
    started = time.perf_counter()
    for _ in tqdm(range(draws), desc=f"K={k} {gradient}", disable=not progress, leave=False):
        for p in guide_params + model_params:
            p.grad = None
        losses.append(objective({"x": x}))
        guide_moments.add(flat_grad(guide_params))
        model_moments.add(flat_grad(model_params))
    seconds = (time.perf_counter() - started) / draws
    return {"k": k, "gradient": gradient, "loss": sum(losses) / len(losses), "guide": guide_moments.snr(),
            "model": model_moments.snr(), "seconds_per_draw": seconds}


def parse_ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes integers separated by commas, got {text!r}") from None
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"--k takes integers of at least 1, got {text!r}")
    return ks


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Example: python run/grad_snr.py --draws 100 --batch-size 16")
    p.add_argument("--run", help="a trained run/svi.py run directory (default: a freshly initialised VAE)")
    p.add_argument("--dataset", default="binarized_mnist", help="data set of the fresh VAE (default: binarized_mnist)")
    p.add_argument("--guide", default="ffg", help="guide family of the fresh VAE (default: ffg)")
    p.add_argument("--data-dir", help="data directory (default: $PYRO_MODELS_DATA, else the user cache)")
    p.add_argument("--k", type=parse_ks, default=[1, 10, 50], help="numbers of particles (default: 1,10,50)")
    p.add_argument("--draws", type=positive_int, default=100, help="gradient draws per (K, estimator) (default: 100)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="test points in the fixed batch (default: 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--out", help="JSON file (default: RUN/grad_snr.json, else ./grad_snr.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.draws < 2:
        print("grad_snr.py: --draws must be at least 2 (a standard deviation needs two)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    pyro.clear_param_store()
    try:
        program, guide, model, x, description = load(args)
    except (OSError, ValueError) as error:
        print(f"grad_snr.py: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    model.eval()
    guide.eval()
    rows = []
    for k in args.k:
        for gradient in GRADIENTS:
            try:
                rows.append(measure(program, guide, model, x, k, gradient, args.draws, args.seed, not args.no_progress))
            except ValueError as error:  # a family DReG cannot serve
                print(f"grad_snr.py: K={k} {gradient}: {error}", file=sys.stderr)
                rows.append({"k": k, "gradient": gradient, "refused": str(error)})
    report = {"model": description, "batch_size": x.shape[0], "draws": args.draws, "seed": args.seed,
              "threads": args.threads, "num_guide_parameters": sum(p.numel() for p in guide.parameters()),
              "snr": "per coordinate |mean| / std over the draws, then mean (and median) over coordinates",
              "rows": rows}
    print(f"{description}; {x.shape[0]} test points, {args.draws} draws per row")
    print(f"{'K':>4} {'gradient':<9} {'guide SNR mean':>15} {'guide median':>13} {'model SNR mean':>15} "
          f"{'-IWAE':>9} {'s/draw':>7}")
    for row in rows:
        if "refused" in row:
            print(f"{row['k']:>4} {row['gradient']:<9} refused")
            continue
        print(f"{row['k']:>4} {row['gradient']:<9} {row['guide']['snr_mean']:>15.4f} {row['guide']['snr_median']:>13.4f} "
              f"{row['model']['snr_mean']:>15.4f} {row['loss']:>9.2f} {row['seconds_per_draw']:>7.3f}")
    out = Path(args.out) if args.out else (Path(args.run) if args.run else Path.cwd()) / "grad_snr.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
