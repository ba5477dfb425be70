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

from pyro_models.core import DATA_PLATE


def log_weights(model, guide, num_particles: int, max_plate_nesting: int = 1, *, data_plate: str = DATA_PLATE,
                **batch) -> torch.Tensor:
    """Tensor (num_particles, batch size): one log-weight per particle and data point.
    ``data_plate``: the name of the model's per-datapoint plate."""
    particle_dim = -(max_plate_nesting + 1)
    with pyro.plate("particles", num_particles, dim=particle_dim):
        guide_trace = poutine.trace(guide).get_trace(**batch)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**batch)
    check_sites_match(model_trace, guide_trace)
    log_p = sum_sites(model_trace, num_particles, max_plate_nesting, latent_only=False, data_plate=data_plate)
    log_q = sum_sites(guide_trace, num_particles, max_plate_nesting, latent_only=True, data_plate=data_plate)
    return log_p - log_q


class SiteMismatch(ValueError):
    """The guide and the model do not have the same latent sites: any bound computed from them
    would be wrong without a sign of it."""


def _latent_names(trace) -> set:
    return {name for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)}


def check_sites_match(model_trace, guide_trace) -> None:
    """Refuse a guide that samples a site the model does not have, or a model latent site the
    guide does not sample (``model_trace`` replayed against ``guide_trace``).

    Pyro only warns in these cases, and the numbers come out wrong: an unmatched guide site adds
    -log q to every weight (an auxiliary guide scored against the bare model gave an "IWAE" of
    +292.7 nats per binary image), an unmatched model site is drawn from its prior and scored
    as if the guide had proposed it. Sites the model enumerates (``infer={"enumerate": ...}``)
    are summed out, not proposed, and are not required of the guide."""
    model_latents = {name for name in _latent_names(model_trace)
                     if not model_trace.nodes[name]["infer"].get("enumerate")}
    observed_in_model = {name for name, site in model_trace.nodes.items()
                         if site["type"] == "sample" and site["is_observed"]}
    for name in sorted(_latent_names(guide_trace)):
        if name in observed_in_model:
            raise SiteMismatch(f"the guide samples site {name!r}, which the model observes: remove it from the guide")
        if name not in model_latents:
            raise SiteMismatch(
                f"the guide samples site {name!r}, which the model does not have: an auxiliary-variable guide "
                "needs the model that scores it, guides.with_auxiliary(model, reverse); otherwise remove the site")
    missing = sorted(model_latents - _latent_names(guide_trace))
    if missing:
        raise SiteMismatch(
            f"the model's latent site {missing[0]!r} is not sampled by the guide: give the guide a site of that "
            "name (e.g. guides.build_guide(family, model.latent_sites, ...))")


def sum_sites(trace, num_particles: int, max_plate_nesting: int, latent_only: bool, names=None,
              data_plate: str = DATA_PLATE) -> torch.Tensor:
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
        if data_plate not in dims:
            raise ValueError(
                f"site {name!r} is outside the {data_plate!r} plate: per-datapoint importance weights need every "
                "sample site inside it (a per-datapoint plate of another name: pass data_plate=its name)"
            )
        log_prob = scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])
        log_prob = log_prob.reshape((1,) * (rank - log_prob.dim()) + log_prob.shape)
        data_pos = rank + dims[data_plate]
        other = [d for d in range(1, rank) if d != data_pos]  # plates nested inside a data point
        if other:
            log_prob = log_prob.sum(other, keepdim=True)
        total = total + log_prob.reshape(log_prob.shape[0], log_prob.shape[data_pos])
    return total.expand(num_particles, -1)
