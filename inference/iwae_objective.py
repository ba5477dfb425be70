"""Importance-weighted training: the negative IWAE-K bound per data point (Burda, Grosse &
Salakhutdinov 2016), with the ordinary gradient or, for the guide, the doubly reparameterised
one (DReG: Tucker, Lawson, Gu & Maddison 2019, "Doubly reparameterized gradient estimators for
Monte Carlo objectives").

Per data point n, with K particles z_kn ~ q(z | x_n) drawn in one vectorised pass (a
``particles`` plate left of the model's plates, as ``inference.log_weights`` does):

    IWAE_K(x_n) = log (1/K) sum_k w_kn,   log w_kn = log p(x_n, z_kn) - log q(z_kn | x_n),

and the loss is -mean_n IWAE_K(x_n): every point gets its own log-mean-exp (nothing is summed
over the batch before it). K = 1 is the ELBO of ``ElboObjective(Trace_ELBO())``, draw for draw.

Latent scales (``latent_scales``, e.g. KL annealing with weight beta_s for site s) act inside each
weight exactly as they act on the ELBO: each latent site's log-densities, the model's prior term
and the guide's log q alike, are multiplied by beta_s,

    log w_kn = log p(x_n | z_kn) + sum_s beta_s [log p(z_kn,s | ...) - log q(z_kn,s | x_n)],

so that K = 1 is exactly the annealed ELBO the ELBO objective trains, and beta = 1 is IWAE-K.
(For beta < 1 the bound is the IWAE bound of the tempered target p(x | z) p(z)^beta q(z)^(1-beta);
it is a training device, like the annealed ELBO, not an estimate of log p(x): evaluate with
``evaluate_importance``, which never scales.) A weight of 0 masks the site's terms, as in the
ELBO. Subsampling factors (``num_data``) never enter a weight: the loss is per data point.

``gradient="dreg"``: the model's parameters get the IWAE gradient above; the guide's parameters
(those of the guide ``nn.Module``) get

    sum_k [(1 - beta) w~_k + beta w~_k^2] d log w_k / d z_k  d z_k / d phi,

with w~ the normalised weights (held fixed) and log w_k evaluated with the guide's distribution
parameters held fixed (stop-gradient), so that phi reaches log w only through the sample z_k.
For beta = 1 this is Tucker et al.'s estimator (weights squared); for beta < 1 the same
derivation (the score term of the tempered bound is beta times the one of IWAE) gives the mixed
coefficient, applied per latent site. Its expectation is the IWAE gradient; its variance is
lower, and its signal-to-noise ratio does not vanish as K grows (run/grad_snr.py measures it).
It needs log q(z) with fixed parameters at a sampled z: direct for ``MeanFieldNormal`` (ffg),
by inverting the couplings for ``RealNVPNormal`` (realnvp) and for ``AuxiliaryFlowNormal``
(auxflow: its joint density q(z_T, v_T | x) over the extended space, whose target
p(x, z) r(v | z, x) has marginal p(x), so DReG applies to the pair); ``PlanarFlowNormal`` has no
closed-form inverse and is refused.

Implementation: one trace of guide and model; the guide's DReG gradient is
``torch.autograd.grad`` of a surrogate over the guide's parameters (the weight coefficients
enter through backward hooks on the sampled values), then the ordinary IWAE loss is
back-propagated and the guide's parameters keep only their DReG term.
"""
import math
import types
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import Independent, Normal

from guides import AuxiliaryFlowNormal, FlowDistribution, MeanFieldNormal

from .log_weights import DATA_PLATE, check_sites_match, sum_sites
from .objectives import Objective
from .refine import RefinedGuide

GRADIENTS = ("standard", "dreg")
DREG_FAMILIES = "ffg (MeanFieldNormal), realnvp (RealNVPNormal), auxflow (AuxiliaryFlowNormal)"


def check_iwae_arguments(num_particles, gradient: str) -> None:
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be an integer of at least 1, got {num_particles!r}")
    if gradient not in GRADIENTS:
        raise ValueError(f"unknown IWAE gradient {gradient!r}; choose from: {', '.join(GRADIENTS)}")


class IwaeObjective(Objective):
    """Negative IWAE-K bound per data point, for the runner (``objective(batch, **schedule) -> float``;
    it back-propagates itself, as ``ElboObjective`` does).

    ``model``: the program the guide is scored against (with ``guides.with_auxiliary`` for an
    auxiliary-variable guide); ``guide``: any guide program (an ``nn.Module`` for ``"dreg"``);
    ``num_particles``: K; ``gradient``: ``"standard"`` or ``"dreg"`` (see the module docstring);
    ``max_plate_nesting``: the model's; ``data_plate``: its per-datapoint plate.

    Pyro's validation runs on the first call only, and the first call refuses a guide whose
    latent sites differ from the model's (``check_sites_match``) and, for ``"dreg"``, a
    parameter that both model and guide use (it cannot take two gradients).
    """

    def __init__(self, model: Callable, guide: Callable, num_particles: int, gradient: str = "standard",
                 max_plate_nesting: int = 1, data_plate: str = DATA_PLATE):
        check_iwae_arguments(num_particles, gradient)
        if gradient == "dreg":
            check_dreg_guide(guide)
        self.model = model
        self.guide = guide
        self.num_particles = num_particles
        self.gradient = gradient
        self.max_plate_nesting = max_plate_nesting
        self.data_plate = data_plate
        self.validated = False

    def __call__(self, batch: dict, **schedule) -> float:
        return self.step((), {**batch, **schedule}).item()

    def step(self, args: tuple, kwargs: dict, per_point: bool = True, backward: bool = True) -> torch.Tensor:
        """The loss of one call of model and guide (``args``, ``kwargs``: what both are called with),
        back-propagated unless ``backward`` is false. ``per_point``: divided by the batch size (the
        runner's loss); otherwise summed as Pyro's ELBOs sum, times N/B when the data plate
        subsamples B of N points (``IwaeLoss``)."""
        first = not self.validated
        with pyro.validation_enabled(first):
            model_trace, guide_trace = self.traces(kwargs, {}, args)
        if first:
            check_sites_match(model_trace, guide_trace)
            if self.gradient == "dreg":
                _check_no_shared_parameters(self.guide, model_trace)
        log_p = self._weighted_sum(model_trace, latent_only=False)
        log_q = self._weighted_sum(guide_trace, latent_only=True)
        factors = self._guide_factors(guide_trace)
        log_w = log_p - log_q
        iwae = torch.logsumexp(log_w, 0) - math.log(self.num_particles)
        factor = 1.0 / log_w.shape[-1] if per_point else _subsampling_factor(guide_trace, self.data_plate)
        loss = (factors - iwae).sum() * factor
        if backward and self.gradient == "dreg":
            self._dreg_backward(loss, log_w, log_p, factors, guide_trace, factor)
        elif backward:
            loss.backward()
        self.validated = True
        return loss.detach()

    def traces(self, batch: dict, schedule: dict, args: tuple = ()):
        """(model trace, guide trace) of K particles, the guide traced inside a ``particles`` plate
        and the model replayed against it (``inference.log_weights``'s layout)."""
        with pyro.plate("particles", self.num_particles, dim=-(self.max_plate_nesting + 1)):
            guide_trace = poutine.trace(self.guide).get_trace(*args, **batch, **schedule)
            model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(
                *args, **batch, **schedule)
        return model_trace, guide_trace

    def log_weights(self, batch: dict, **schedule) -> torch.Tensor:
        """The (K, batch) log-weights the loss is made of, latent scales applied (no gradient step)."""
        model_trace, guide_trace = self.traces(batch, schedule)
        return self._weighted_sum(model_trace, latent_only=False) - self._weighted_sum(guide_trace, latent_only=True)

    # --- pieces ------------------------------------------------------------------------------
    def _sum(self, trace, names, latent_only: bool) -> torch.Tensor:
        return sum_sites(trace, self.num_particles, self.max_plate_nesting, latent_only=latent_only, names=names,
                         data_plate=self.data_plate)

    def _weighted_sum(self, trace, latent_only: bool) -> torch.Tensor:
        """sum over sample sites of latent weight x unscaled log-density, (K, batch)."""
        total = torch.zeros(())
        for name, site in _sample_sites(trace, latent_only):
            weight = latent_weight(site)
            if weight != 0:
                total = total + weight * self._sum(trace, {name}, latent_only)
        return total.expand(self.num_particles, -1) if total.dim() else total

    def _guide_factors(self, guide_trace) -> torch.Tensor:
        """Observed sites of the guide (``pyro.factor``, e.g. a semi-amortised guide's encoder
        term): added to the loss per point as Trace_ELBO adds them (they are not part of q)."""
        names = {name for name, site in _sample_sites(guide_trace, False) if site["is_observed"]}
        if not names:
            return torch.zeros(())
        return self._sum(guide_trace, names, latent_only=False).mean(0)

    def _dreg_backward(self, loss, log_w, log_p, factors, guide_trace, factor: float) -> None:
        params = [p for p in self.guide.parameters() if p.requires_grad]
        with torch.no_grad():
            normalised = torch.softmax(log_w, 0)
        log_q_fixed, hooks = torch.zeros(()), []
        try:
            for name, site in _sample_sites(guide_trace, True):
                weight = latent_weight(site)
                fixed = fixed_parameter_log_prob(site, guide_trace)
                if fixed is None:  # an auxiliary flow's v_T: its density is part of its latent's
                    continue
                if weight != 0:
                    fake = types.SimpleNamespace(nodes={name: {**site, "fn": _Scored(fixed)}})
                    log_q_fixed = log_q_fixed + weight * self._sum(fake, {name}, True)
                coefficient = (1 - weight) * normalised + weight * normalised ** 2
                for value in _sampled_values(site, guide_trace):
                    if value.requires_grad:
                        hooks.append(value.register_hook(_scaling(coefficient, value, site, self)))
            surrogate = (factors - (log_p - log_q_fixed)).sum() * factor
            grads = torch.autograd.grad(surrogate, params, retain_graph=True, allow_unused=True)
        finally:
            for hook in hooks:
                hook.remove()
        saved = [None if p.grad is None else p.grad.clone() for p in params]
        loss.backward()
        for p, grad, before in zip(params, grads, saved):
            if grad is None:
                p.grad = before
            else:
                p.grad = grad if before is None else before + grad



class IwaeLoss(pyro.infer.ELBO):
    """IWAE-K as a Pyro loss, for ``SVI(model, guide, optim, loss=IwaeLoss(num_particles=K))``.

    Each data point gets its own log-mean-exp of K weights (Pyro's ``RenyiELBO(alpha=0)`` mixes the
    points of a batch in one), the loss is summed over the batch as Trace_ELBO's is (times N/B
    under subsampling) and K = 1 is Trace_ELBO draw for draw. ``gradient="dreg"`` gives the guide's
    parameters the doubly reparameterised gradient (see the module docstring). Model and guide are
    called as SVI calls them, positional data included; each pair gets its ``IwaeObjective``, whose
    first call checks that their sites match.
    """

    def __init__(self, num_particles: int = 1, gradient: str = "standard", max_plate_nesting: int = 1,
                 data_plate: str = DATA_PLATE):
        check_iwae_arguments(num_particles, gradient)
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.gradient = gradient
        self.data_plate = data_plate
        self._objectives: list[IwaeObjective] = []

    def objective(self, model: Callable, guide: Callable) -> IwaeObjective:
        """The objective of this model and guide (made on their first step, then kept)."""
        for objective in self._objectives:
            if objective.model is model and objective.guide is guide:
                return objective
        objective = IwaeObjective(model, guide, self.num_particles, self.gradient, self.max_plate_nesting,
                                  self.data_plate)
        self._objectives.append(objective)
        return objective

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.objective(model, guide).step(args, kwargs, per_point=False, backward=False).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        return self.objective(model, guide).step(args, kwargs, per_point=False).item()

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("IwaeLoss traces its K particles in one vectorised pass (IwaeObjective.traces), "
                                  "not one trace per particle")


def _subsampling_factor(guide_trace, data_plate: str) -> float:
    """N/B where the data plate subsamples B of N points (1 otherwise)."""
    for _, site in _sample_sites(guide_trace, True):
        for frame in site["cond_indep_stack"]:
            if frame.name == data_plate and frame.full_size:
                return frame.full_size / frame.size
    return 1.0

# --- latent weights ----------------------------------------------------------------------------
def _sample_sites(trace, latent_only: bool):
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site) and not (latent_only and site["is_observed"]):
            yield name, site


def latent_weight(site) -> float:
    """A site's annealing weight: its trace scale without subsampling factors, 0 when masked out."""
    mask = site["mask"]
    if mask is False:
        return 0.0
    scale = site["scale"]
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.full_size != frame.size:
            scale = scale * frame.size / frame.full_size  # undo Pyro's subsampling factor
    if torch.is_tensor(scale):
        if scale.numel() != 1:
            raise ValueError(f"site {site['name']!r} has a per-element scale: an importance weight takes one "
                             "latent weight per site")
        scale = scale.item()
    return float(scale)


# --- DReG: log q with the guide's parameters held fixed ----------------------------------------
def dreg_refusal(family) -> str | None:
    """Why a guide family cannot give DReG gradients (None if it can)."""
    if isinstance(family, (MeanFieldNormal, AuxiliaryFlowNormal)) or hasattr(family, "inverse_log_prob"):
        return None
    return (f"gradient='dreg' needs log q(z) with the guide's parameters held fixed at each sampled z, and "
            f"{type(family).__name__} ({family.site.name!r}) has no closed-form inverse, so it can only score the "
            f"values it sampled itself: use gradient='standard', or a family that can: {DREG_FAMILIES}")


def check_dreg_guide(guide) -> None:
    """Refuse, in one line, a guide that DReG cannot serve (before any training)."""
    if not isinstance(guide, nn.Module):
        raise TypeError("gradient='dreg' needs the guide as an nn.Module (its parameters get the DReG gradient, "
                         "all others the IWAE one): wrap it in one, or use gradient='standard'")
    if isinstance(guide, RefinedGuide) and guide.mode == "full":
        raise ValueError("gradient='dreg' with a RefinedGuide in mode 'full': the refined q depends on the model's "
                         "parameters through the refinement steps, so the model would not get the IWAE gradient; "
                         "use mode 'detach' or 'eval', or gradient='standard'")
    for family in getattr(guide, "families", ()):
        reason = dreg_refusal(family)
        if reason is not None:
            raise ValueError(reason)


def _check_no_shared_parameters(guide: nn.Module, model_trace) -> None:
    owned = {id(p): name for name, p in guide.named_parameters()}
    for name, site in model_trace.nodes.items():
        if site["type"] == "param" and id(site["value"]) in owned:
            raise ValueError(f"gradient='dreg': parameter {owned[id(site['value'])]!r} of the guide is also used by "
                             f"the model (as {name!r}), and it cannot take both the DReG and the IWAE gradient")


class _Scored:
    """A stand-in distribution whose log_prob is already computed (for ``sum_sites``)."""

    def __init__(self, log_prob: torch.Tensor):
        self._log_prob = log_prob

    def log_prob(self, value):
        return self._log_prob


class _WithFamily(nn.Module):
    """Holds a family so that ``torch.func.functional_call`` can swap in detached parameters."""

    def __init__(self, family, fn):
        super().__init__()
        self.family = family
        self.fn = fn

    def forward(self, *args):
        return self.fn(self.family, *args)


def _call_with_fixed_networks(family, fn, *args):
    """``fn(family, *args)`` with every parameter of the family's shared networks detached."""
    holder = _WithFamily(family, fn)
    fixed = {f"family.{name}": p.detach() for name, p in family.named_parameters()}
    return torch.func.functional_call(holder, fixed, args)


def _detached(fn):
    if isinstance(fn, Independent):
        return Independent(_detached(fn.base_dist), fn.reinterpreted_batch_ndims)
    if isinstance(fn, Normal):
        return Normal(fn.loc.detach(), fn.scale.detach())
    raise ValueError(f"gradient='dreg' cannot evaluate {type(fn).__name__} with its parameters held fixed: use "
                     f"gradient='standard', or a guide family that can: {DREG_FAMILIES}")


def fixed_parameter_log_prob(site, guide_trace) -> torch.Tensor | None:
    """log q(value) of a guide site with every guide parameter held fixed (gradient only through
    the value); None for an auxiliary flow's v_T site (scored jointly with its latent)."""
    fn, value = site["fn"], site["value"]
    if isinstance(fn, FlowDistribution):
        family = fn.family
        if isinstance(family, AuxiliaryFlowNormal):
            v = guide_trace.nodes[family.aux_name]["value"]
            return _call_with_fixed_networks(family, type(family).joint_log_prob, fn.params.detach(), value, v)
        if not hasattr(family, "inverse_log_prob"):
            raise ValueError(dreg_refusal(family))
        return _call_with_fixed_networks(family, type(family).inverse_log_prob, fn.params.detach(), value)
    if _is_auxiliary_value(site["name"], guide_trace):
        return None
    return _detached(fn).log_prob(value)


def _is_auxiliary_value(name: str, guide_trace) -> bool:
    """Whether the site is the v_T of an auxiliary flow in this trace."""
    return any(isinstance(site["fn"], FlowDistribution) and getattr(site["fn"].family, "aux_name", None) == name
               for _, site in _sample_sites(guide_trace, True))


def _sampled_values(site, guide_trace):
    """The tensors through which the guide's parameters reach the weights at this site."""
    values = [site["value"]]
    fn = site["fn"]
    if isinstance(fn, FlowDistribution) and isinstance(fn.family, AuxiliaryFlowNormal):
        values.append(guide_trace.nodes[fn.family.aux_name]["value"])
    return values


def _scaling(coefficient: torch.Tensor, value: torch.Tensor, site, objective: IwaeObjective):
    """A backward hook multiplying the gradient at each particle's value by its coefficient."""
    event_dim = site["fn"].event_dim
    batch_dims = value.dim() - event_dim
    dims = {frame.name: frame.dim for frame in site["cond_indep_stack"]}
    shape = [1] * batch_dims
    shape[batch_dims - (objective.max_plate_nesting + 1)] = coefficient.shape[0]
    shape[batch_dims + dims[objective.data_plate]] = coefficient.shape[1]
    factor = coefficient.reshape(shape + [1] * event_dim)
    return lambda grad: grad * factor
