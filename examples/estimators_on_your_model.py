#!/usr/bin/env python
"""The estimators on your own model: importance sampling (ELBO, IWAE-K), AIS and the
inference-gap report, on a probabilistic PCA written in plain Pyro whose log p(x) is known, so
you can see each estimate sit below the truth. The guide is a library family amortised by a
linear encoder; the gap report fits the same family per point (q*) and checks itself.

    python examples/estimators_on_your_model.py [--ais-steps 300]
"""
import argparse
import warnings

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from guides import LatentSite, MeanFieldNormal, build_guide
from inference import AISSettings, GapSettings, LocalOptSettings, ais, evaluate_importance, gap_report

W = torch.tensor([[1.0, 0.5], [0.3, -1.0], [0.8, 0.8], [-0.5, 0.2], [0.1, 1.2]])


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T, 0.5).to_event(1), obs=x)


def exact_log_px(x):
    return dist.MultivariateNormal(torch.zeros(5), W @ W.T + 0.25 * torch.eye(5)).log_prob(x)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ais-steps", type=int, default=300)
    args = parser.parse_args(argv)
    pyro.set_rng_seed(0)
    x = dist.MultivariateNormal(torch.zeros(5), W @ W.T + 0.25 * torch.eye(5)).sample((50,))
    guide = build_guide(MeanFieldNormal, [LatentSite("z", 2)], encoder=nn.Identity(), encoder_dim=5)
    exact = exact_log_px(x).mean()
    iw = evaluate_importance(model, guide, {"x": x}, num_particles=1000)
    print(f"exact log p(x) {exact:.3f}; untrained guide: ELBO {iw.elbo.mean():.3f}, IWAE-1000 {iw.iwae.mean():.3f}")
    result = ais(model, {"x": x}, AISSettings(num_steps=args.ais_steps, leapfrog_steps=5))
    print(f"AIS ({args.ais_steps} steps): {result.log_px.mean():.3f} (a stochastic lower bound)")
    settings = GapSettings(ais=AISSettings(num_steps=args.ais_steps, leapfrog_steps=5), bdmc_points=20,
                           convergence_points=20, iwae_k=500, elbo_samples=500, local=LocalOptSettings(max_steps=2000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = gap_report(model, guide, {"x": x}, settings, log_px_exact=exact_log_px(x))
    print(f"gap report: approximation gap {report['approximation_gap']:.3f}, amortisation gap "
          f"{report['amortisation_gap']:.3f}, converged: {report['converged']}")
    for warning in caught:
        print(f"  {warning.message}")


if __name__ == "__main__":
    main()
