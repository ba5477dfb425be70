"""Per-datapoint importance log-weights log p(x, z) - log q(z | x), vectorised over particles.

The guide is traced inside a ``particles`` plate placed left of the model's plates, the model is
replayed against it, and every site's log-density is reduced to shape (particles, data points).
Densities are unscaled: ``poutine.scale`` factors (annealing, subsampling) are training devices
and must not leak into an estimate of log p(x).
"""
import pyro
import torch
from pyro import distributions as dist
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

from guides import FlowDistribution
from pyro_models.core import DATA_PLATE

from .joint_sites import per_point_log_prob


def log_weights(model, guide, num_particles: int, max_plate_nesting: int = 1, *, data_plate: str = DATA_PLATE,
                **batch) -> torch.Tensor:
    """Tensor (num_particles, batch size): one log-weight per particle and data point.
    ``data_plate``: the name of the model's per-datapoint plate."""
    particle_dim = -(max_plate_nesting + 1)
    check_data(batch)  # before the guide: a NaN would otherwise be reported as the guide's
    with pyro.plate("particles", num_particles, dim=particle_dim):
        guide_trace = poutine.trace(guide).get_trace(**batch)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**batch)
    check_sites_match(model_trace, guide_trace)
    check_observed(model_trace)
    log_p = sum_sites(model_trace, num_particles, max_plate_nesting, latent_only=False, data_plate=data_plate)
    log_q = sum_sites(guide_trace, num_particles, max_plate_nesting, latent_only=True, data_plate=data_plate)
    return log_p - log_q


class DataOutOfSupport(ValueError):
    """Data given to an estimator that its model's likelihood does not take (a NaN, a 2 where the
    likelihood is Bernoulli): every bound computed from them would be a number, and wrong."""


def check_data(batch: dict) -> None:
    """Refuse a floating-point data tensor that holds a NaN or an infinity, naming it and the point."""
    for key, value in batch.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            bad = (~torch.isfinite(value)).reshape(value.shape[0], -1).any(-1).nonzero()[0].item() if value.dim() else 0
            raise DataOutOfSupport(f"the data {key!r} hold a NaN or an infinite value (point {bad}): an estimate "
                                   "from them would be meaningless; clean the data first")


def check_observed(model_trace) -> None:
    """Refuse data outside the support of the likelihood that observes them (a value other than 0
    or 1 for a Bernoulli likelihood, ...), naming the site, the point and the value."""
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"] or site_is_subsample(site):
            continue
        value, support = site["value"], site["fn"].support
        inside = support.check(value)
        if not torch.is_tensor(inside) or inside.all():
            continue
        point = (~inside).nonzero()[0][-1].item() if inside.dim() else 0  # the data plate is the rightmost dim
        element = support
        while hasattr(element, "base_constraint"):  # independent(...): the constraint of each element
            element = element.base_constraint
        outside = ~element.check(value)
        shown = value[outside].reshape(-1)[0].item() if outside.shape == value.shape and outside.any() else "?"
        likelihood = site["fn"]
        while hasattr(likelihood, "base_dist"):  # to_event(...), masks: the distribution itself
            likelihood = likelihood.base_dist
        raise DataOutOfSupport(f"the data at the observed site {name!r} lie outside what its likelihood "
                               f"({type(likelihood).__name__}) takes, {element}: point {point} holds {shown!r}; "
                               "bring the data to the model's support (e.g. binarise images for a Bernoulli likelihood)")


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
    are summed out, not proposed, and are not required of the guide. A guide's own auxiliary sites
    (``infer={"is_auxiliary": True}``, as Pyro's autoguides sample their unconstrained values) are
    part of q, not sites the model must have. A guide site that is a point mass with no auxiliary
    site behind it (``AutoDelta``) has no density to weight by and is refused."""
    model_latents = {name for name in _latent_names(model_trace)
                     if not model_trace.nodes[name]["infer"].get("enumerate")}
    observed_in_model = {name for name, site in model_trace.nodes.items()
                         if site["type"] == "sample" and site["is_observed"]}
    own_auxiliary = {name for name in _latent_names(guide_trace) if guide_trace.nodes[name]["infer"].get("is_auxiliary")}
    for name in sorted(_latent_names(guide_trace) - own_auxiliary):
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
    if not own_auxiliary:  # a Delta site is a density only as a transform of an auxiliary site's draw
        flows_outputs = {getattr(site["fn"].family, "aux_name", None) for site in guide_trace.nodes.values()
                         if site["type"] == "sample" and isinstance(site["fn"], FlowDistribution)}
        point_masses = sorted(name for name in model_latents & _latent_names(guide_trace)
                              if _is_point_mass(guide_trace.nodes[name]["fn"]) and name not in flows_outputs)
        if point_masses:
            raise SiteMismatch(
                f"the guide's site {point_masses[0]!r} is a point mass (Delta): it has no density, so it is no "
                "proposal for importance weights and gives no bound (AutoDelta finds a MAP point, not a q); use a "
                "guide with a density (AutoNormal, or guides.build_guide)")


def _is_point_mass(fn) -> bool:
    """A Delta that carries no density of its own (a Delta with a ``log_density`` is one, as a user's
    flow written with Delta sites is)."""
    return isinstance(fn, dist.Delta) and not bool(torch.as_tensor(fn.log_density).ne(0).any())


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
        if data_plate not in dims and site["infer"].get("is_auxiliary"):  # a joint autoguide: each point's marginal
            total = total + per_point_log_prob(trace, name, data_plate, rank)
            continue
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
