"""Per-datapoint importance log-weights log p(x, z) - log q(z | x), vectorised over particles.

The guide is traced inside a ``particles`` plate placed left of the model's plates, the model is
replayed against it, and every site's log-density is reduced to shape (particles, data points).
Densities are unscaled: ``poutine.scale`` factors (annealing, subsampling) are training devices
and must not leak into an estimate of log p(x).
"""
import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

DATA_PLATE = "data"


def log_weights(model, guide, num_particles: int, max_plate_nesting: int = 1, **batch) -> torch.Tensor:
    """Tensor (num_particles, batch size): one log-weight per particle and data point."""
    particle_dim = -(max_plate_nesting + 1)
    with pyro.plate("particles", num_particles, dim=particle_dim):
        guide_trace = poutine.trace(guide).get_trace(**batch)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**batch)
    log_p = _sum_sites(model_trace, num_particles, max_plate_nesting, latent_only=False)
    log_q = _sum_sites(guide_trace, num_particles, max_plate_nesting, latent_only=True)
    return log_p - log_q


def _sum_sites(trace, num_particles: int, max_plate_nesting: int, latent_only: bool, names=None) -> torch.Tensor:
    """Sum of the (unscaled) log-densities of a trace's sample sites, as (particles, points);
    ``names``: only these sites (default: all, or the latent ones with ``latent_only``)."""
    rank = max_plate_nesting + 1  # position 0 is the particles plate
    total = torch.zeros(())
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or (latent_only and site["is_observed"]):
            continue
        if names is not None and name not in names:
            continue
        dims = {frame.name: frame.dim for frame in site["cond_indep_stack"]}
        if DATA_PLATE not in dims:
            raise ValueError(
                f"site {name!r} is outside the {DATA_PLATE!r} plate: per-datapoint importance "
                "weights need every sample site inside it"
            )
        log_prob = scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])
        log_prob = log_prob.reshape((1,) * (rank - log_prob.dim()) + log_prob.shape)
        data_pos = rank + dims[DATA_PLATE]
        other = [d for d in range(1, rank) if d != data_pos]  # plates nested inside a data point
        if other:
            log_prob = log_prob.sum(other, keepdim=True)
        total = total + log_prob.reshape(log_prob.shape[0], log_prob.shape[data_pos])
    return total.expand(num_particles, -1)
