#!/usr/bin/env python
"""Variance of the LFM guide's gradient estimator for one fixed batch, over repeated draws.

    python run/grad_variance.py --run runs/lfm-bernoulli-neural [--draws 200] [--out FILE.json]

Loads a trained ``--model lfm`` run (its ``best.pt``, else ``checkpoint.pt``), takes the first
``--batch-size`` dev words as the fixed batch, puts the networks in evaluation mode (no dropout:
only the estimator's own noise is measured) and draws the gradient of the per-word negative
ELBO with respect to the guide's parameters (encoder and head; not the baseline's) ``--draws``
times with TraceGraph_ELBO and each baseline:

- ``none``: plain score function (with Pyro's downstream-cost Rao-Blackwellisation);
- ``decaying``: decaying average of the cost (beta from the run), warmed up on ``--warmup``
  training batches, then frozen (beta = 1) while the fixed batch is drawn: Pyro keeps one
  average per batch position, so updating it on the fixed batch would turn it into a per-word
  oracle that training (new words at every position) never has;
- ``neural``: the run's trained baseline network (a run trained with ``--baseline neural``, else
  a fresh one), fitted for ``--fit-steps`` further steps on training batches with the networks in
  evaluation mode (the costs without dropout are lower than the ones it was trained on).

For each: total variance (sum over parameters of the per-coordinate variance), the squared norm
of the mean gradient, and their ratio. A row for the straight-through concrete estimator of the
same q is added (biased, so its variance is not the whole story). Prints a table, writes JSON.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import TraceGraph_ELBO, TraceMeanField_ELBO  # noqa: E402

from guides import ConcreteBernoulli  # noqa: E402
from inference import ElboObjective  # noqa: E402
from inference.training.checkpoint import load_checkpoint  # noqa: E402
from pyro_models.datasets import DataDir  # noqa: E402
from pyro_models.lfm.baselines import Baselines  # noqa: E402
from pyro_models.lfm.experiment import LFMExperiment, LFMSettings  # noqa: E402
from pyro_models.lfm.model import LFMConfig  # noqa: E402


def load_run(run: Path):
    """The run's model and guide (from best.pt when it has one), with a neural baseline network
    and no free nats: (experiment, its context, data, built, whether the run trained the baseline)."""
    config = json.loads((run / "config.json").read_text())
    experiment = LFMExperiment()
    settings = LFMSettings(**{**config["settings"], "baseline": "neural", "free_nats": 0.0})
    ctx = experiment.context(config=LFMConfig(**config["model_config"]), settings=settings, guide="bernoulli",
                             data_dir=DataDir(config["run"]["data_dir"]), batch_size=config["train"]["batch_size"])
    data = experiment.load_data(ctx)
    built = experiment.build(ctx, data)
    if (run / "best.pt").exists():
        states = load_checkpoint(run / "best.pt")["modules"]
    else:
        states = load_checkpoint(run / "checkpoint.pt")["modules"]
    built.model.load_state_dict(states["model"])
    has_neural = any(key.startswith("site_infer.net.") for key in states["guide"])
    guide_state = {k: v for k, v in states["guide"].items() if has_neural or not k.startswith("site_infer.")}
    built.guide.load_state_dict(guide_state, strict=has_neural)
    return experiment, ctx, data, built, has_neural


def guide_parameters(guide):
    return [p for name, p in guide.named_parameters() if not name.startswith("site_infer.")]


def draw_gradients(objective, params, batch, draws: int) -> torch.Tensor:
    grads = []
    for _ in range(draws):
        for p in params:
            p.grad = None
        objective(batch)
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]))
    return torch.stack(grads)


def fit_neural_baseline(experiment, ctx, data, built, steps: int):
    net = built.guide.site_infer.net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    objective = ElboObjective(TraceGraph_ELBO(), built.model.model, built.guide)
    batches = experiment.batches(ctx, data)
    for step in range(steps):
        optimizer.zero_grad()
        objective(batches(step))
        optimizer.step()


def summarise(grads: torch.Tensor) -> dict:
    mean = grads.mean(0)
    variance = grads.var(0).sum().item()
    return {"total_variance": variance, "mean_grad_sq_norm": mean.pow(2).sum().item(),
            "variance_over_sq_norm": variance / max(mean.pow(2).sum().item(), 1e-30)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run directory of a --model lfm run")
    parser.add_argument("--draws", type=int, default=200, help="gradient draws per estimator")
    parser.add_argument("--batch-size", type=int, help="words in the fixed batch (default: the run's)")
    parser.add_argument("--warmup", type=int, default=100, help="training batches that warm up the decaying average")
    parser.add_argument("--fit-steps", type=int, default=300, help="training batches that fit the neural baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="JSON file (default: RUN/grad_variance.json)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    torch.set_num_threads(args.threads)
    pyro.clear_param_store()
    experiment, ctx, data, built, has_neural = load_run(run)
    batch_size = args.batch_size or ctx.batch_size
    ctx, settings = ctx.replace(batch_size=batch_size, seed=args.seed), ctx.settings
    words = data.dev
    batch = words.batch(torch.arange(batch_size))
    built.model.eval()
    built.guide.eval()
    for p in built.model.parameters():
        p.requires_grad_(False)
    fit_neural_baseline(experiment, ctx, data, built, args.fit_steps)
    params = guide_parameters(built.guide)
    trained_net = built.guide.site_infer
    vocab_size, bits = built.model.config.vocab_size, built.model.config.latent_bits
    results = {}
    for kind in ("none", "decaying", "neural"):
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        built.guide.site_infer = trained_net if kind == "neural" else Baselines(kind, vocab_size, bits, settings.baseline_beta)
        objective = ElboObjective(TraceGraph_ELBO(), built.model.model, built.guide)
        if kind == "decaying":
            batches = experiment.batches(ctx.replace(seed=args.seed + 1), data)
            for step in range(args.warmup):
                objective(batches(step))
            built.guide.site_infer.beta = 1.0  # frozen from here on
        started = time.perf_counter()
        results[f"reinforce_{kind}"] = {**summarise(draw_gradients(objective, params, batch, args.draws)),
                                        "seconds_per_draw": (time.perf_counter() - started) / args.draws}
    built.guide.site_infer = trained_net
    # the straight-through concrete estimator of the same q (same logits; biased)
    bernoulli_family = built.guide.families[0]
    built.guide.families[0] = ConcreteBernoulli(bernoulli_family.site, temperature=settings.temperature)
    pyro.set_rng_seed(args.seed)
    objective = ElboObjective(TraceMeanField_ELBO(), built.model.model, built.guide)
    started = time.perf_counter()
    results["concrete_straight_through"] = {**summarise(draw_gradients(objective, params, batch, args.draws)),
                                            "seconds_per_draw": (time.perf_counter() - started) / args.draws}
    built.guide.families[0] = bernoulli_family
    report = {"run": str(run), "batch_size": batch_size, "draws": args.draws, "batch": "first dev words",
              "num_guide_parameters": sum(p.numel() for p in params),
              "neural_baseline": f"{'the run' + chr(39) + 's' if has_neural else 'a fresh one'}, fitted {args.fit_steps} more steps",
              "decaying_warmup_batches": args.warmup, "estimators": results}
    print(f"gradient of the per-word -ELBO w.r.t. the guide's {report['num_guide_parameters']} parameters; "
          f"{batch_size} dev words, {args.draws} draws")
    print(f"{'estimator':<28} {'total variance':>15} {'|mean grad|^2':>14} {'ratio':>10} {'s/draw':>8}")
    for name, r in results.items():
        print(f"{name:<28} {r['total_variance']:>15.4g} {r['mean_grad_sq_norm']:>14.4g} "
              f"{r['variance_over_sq_norm']:>10.4g} {r['seconds_per_draw']:>8.3f}")
    out = Path(args.out) if args.out else run / "grad_variance.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
