"""Normalising-flow families on top of a diagonal Gaussian: planar, RealNVP and the auxiliary
flow q_AF of Cremer, Li & Duvenaud (2018).

Every family maps a flat per-datapoint parameter vector to a distribution over one real site,
so each has an amortised form (vector from an encoder) and a local form (vector from a table).
What a "family" is, precisely:

- ``planar``: z_0 ~ N(loc, diag scale^2), then K planar steps z <- z + u_hat tanh(w.z + b).
  Every parameter (loc, scale, and u, w, b of every step) is per data point: the local family
  is exactly the set of all such distributions, with nothing shared.
- ``realnvp``: z_0 ~ N(loc, diag scale^2), then K affine coupling layers (each after a fixed
  permutation) whose shift and log-scale networks are *shared* and read the per-datapoint
  *context vector* c next to the untouched half of z. Per-datapoint parameters: (loc, scale, c).
  The family {q(. ; loc, scale, c)} is indexed by the shared networks: local optimisation keeps
  the amortised guide's trained networks fixed and optimises (loc, scale, c) per data point,
  so q* and q are in the same family in this sense.
- ``auxflow`` (q_AF): z_0 ~ N(loc, diag scale^2), v_0 ~ q(v_0 | z_0, c), then K steps
  v <- v * exp(s_1(z, c)) + t_1(z, c); z <- z * exp(s_2(v, c)) + t_2(v, c). The guide emits
  z_T at the latent site, with log-density log q(z_T, v_T | x), and v_T at the site
  ``aux_<name>``; the model side adds r(v_T | z_T, x) through ``guides.auxiliary.with_auxiliary``.
  Shared networks and per-datapoint (loc, scale, c) as for RealNVP; r is shared too.

Planar steps are not invertible in closed form, and the auxiliary flow's density of z alone is
intractable, so the distributions below compute log q at sampling time and return it for the
value they sampled (which is all Trace_ELBO and ``inference.log_weights`` ask). RealNVP also
scores other values by inverting the couplings.
"""
import math

import pyro
import torch
import torch.nn.functional as F
from pyro import distributions as dist
from pyro.distributions import constraints
from torch import nn

from pyro_models.core import softplus_inverse
from pyro_models.networks import ELU

from .auxiliary import AuxiliaryDraw
from .family import Family

LOG_2PI = math.log(2 * math.pi)
MIN_SCALE = 1e-4
_RAW_UNIT_SCALE = softplus_inverse(1.0 - MIN_SCALE)


def _base(params: torch.Tensor, d: int):
    loc, raw = params[..., :d], params[..., d:2 * d]
    return loc, F.softplus(raw) + MIN_SCALE


def _base_prior(d: int) -> torch.Tensor:
    return torch.cat([torch.zeros(d), torch.full((d,), _RAW_UNIT_SCALE)])


def _std_normal_log_prob(eps: torch.Tensor) -> torch.Tensor:
    return -0.5 * (eps ** 2 + LOG_2PI).sum(-1)


def _sample_base(params: torch.Tensor, d: int):
    """z_0 ~ N(loc, diag scale^2) (reparameterised) and log q(z_0), for every flow family."""
    loc, scale = _base(params, d)
    eps = torch.randn_like(loc)
    return loc + scale * eps, _std_normal_log_prob(eps) - scale.log().sum(-1)


class FlowDistribution(dist.TorchDistribution):
    """q(z) of a flow family with per-datapoint ``params`` (batch shape ``params.shape[:-1]``).

    ``rsample`` runs the flow and keeps (value, log q(value)); ``log_prob`` of that same tensor
    returns the kept density. Other values are scored by ``family.inverse_log_prob`` when the
    family has one, else a ValueError says why it cannot be done.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, family, params: torch.Tensor, validate_args=None):
        self.family = family
        self.params = params
        # [(value, log_prob, extra outputs of the flow)], shared with expanded copies so that the
        # object a pyro.sample statement was given sees what its broadcast copy sampled.
        self._cache = []
        super().__init__(params.shape[:-1], torch.Size([family.site.dim]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        new = FlowDistribution(self.family, self.params.expand(batch_shape + self.params.shape[-1:]))
        new._cache = self._cache
        return new

    def rsample(self, sample_shape=torch.Size()):
        params = self.params.expand(torch.Size(sample_shape) + self.params.shape)
        value, log_prob, extra = self.family.flow(params)
        self._cache[:] = [(value, log_prob, extra)]
        return value

    @property
    def extra(self):
        """Other outputs of the last sampling pass (the auxiliary flow's v_T)."""
        if not self._cache:
            raise RuntimeError("sample from the distribution first")
        return self._cache[0][2]

    def log_prob(self, value):
        if self._cache and value is self._cache[0][0]:
            return self._cache[0][1]
        inverse = getattr(self.family, "inverse_log_prob", None)
        if inverse is None:
            raise ValueError(
                f"{type(self.family).__name__} can only score the values it sampled itself "
                "(its density at other points is not available in closed form)"
            )
        return inverse(self.params, value)


class FlowFamily(Family):
    """Shared pieces: a diagonal Gaussian base and the ``flow`` contract.

    ``flow(params)`` returns (z, log q(z), extra) for params of any batch shape.
    ``has_shared_networks``: whether the family holds networks shared by all data points (then
    a local q* reuses the amortised guide's trained networks, frozen).
    """

    supports = ("real",)
    has_shared_networks = False

    def distribution(self, params):
        return FlowDistribution(self, params)

    def flow(self, params):
        raise NotImplementedError


class PlanarFlowNormal(FlowFamily):
    """K planar steps (Rezende & Mohamed 2015) on a diagonal Gaussian, all parameters per point.

    Parameters: [loc (d), raw scale (d), then per step u (d), w (d), b (1)]. u is replaced by
    u_hat = u + (m(w.u) - w.u) w / |w|^2 with m(a) = -1 + softplus(a), so w.u_hat >= -1 and
    every step is invertible; log|det J| = log|1 + u_hat . w tanh'(w.z + b)|.
    """

    def __init__(self, site, num_steps: int = 10):
        super().__init__(site)
        self.num_steps = num_steps

    @property
    def param_dim(self):
        return 2 * self.site.dim + self.num_steps * (2 * self.site.dim + 1)

    def prior_params(self):
        d = self.site.dim
        # u = 0 makes every step the identity; w small and non-zero so that gradients flow.
        steps = torch.cat([torch.zeros(d), torch.full((d,), 0.01), torch.zeros(1)])
        return torch.cat([_base_prior(d), steps.repeat(self.num_steps)])

    def steps(self, params):
        d = self.site.dim
        rest = params[..., 2 * d:].unflatten(-1, (self.num_steps, 2 * d + 1))
        return rest[..., :d], rest[..., d:2 * d], rest[..., 2 * d]

    @staticmethod
    def constrained_u(u, w):
        wu = (w * u).sum(-1, keepdim=True)
        m = -1 + F.softplus(wu)
        return u + (m - wu) * w / (w * w).sum(-1, keepdim=True).clamp(min=1e-12)

    def flow(self, params):
        d = self.site.dim
        z, log_q = _sample_base(params, d)
        us, ws, bs = self.steps(params)
        for k in range(self.num_steps):
            u, w, b = us[..., k, :], ws[..., k, :], bs[..., k:k + 1]
            u_hat = self.constrained_u(u, w)
            a = (w * z).sum(-1, keepdim=True) + b
            h = torch.tanh(a)
            psi_u = (1 - h ** 2) * (w * u_hat).sum(-1, keepdim=True)
            log_q = log_q - torch.log((1 + psi_u).abs().squeeze(-1) + 1e-12)
            z = z + u_hat * h
        return z, log_q, None


def _coupling_net(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(n_in, hidden), ELU(), nn.Linear(hidden, hidden), ELU(),
                        nn.Linear(hidden, 2 * n_out))
    nn.init.zeros_(net[-1].weight)  # every coupling starts as the identity
    nn.init.zeros_(net[-1].bias)
    return net


def _shift_and_log_scale(net, inputs):
    shift, raw = net(inputs).chunk(2, dim=-1)
    return shift, 2.0 * torch.tanh(raw / 2.0)  # log-scale bounded in (-2, 2): stable training


class ContextFlowFamily(FlowFamily):
    """Flows whose networks are shared and read a per-datapoint context vector c.

    Parameters per point: [loc (d), raw scale (d), c (context_dim)].
    """

    has_shared_networks = True

    def __init__(self, site, context_dim: int | None = None):
        super().__init__(site)
        self.context_dim = context_dim if context_dim is not None else site.dim

    @property
    def param_dim(self):
        return 2 * self.site.dim + self.context_dim

    def prior_params(self):
        return torch.cat([_base_prior(self.site.dim), torch.zeros(self.context_dim)])


class RealNVPNormal(ContextFlowFamily):
    """K affine coupling layers (Dinh et al. 2017) on a diagonal Gaussian.

    Layer k permutes z by a fixed random permutation, keeps the first half and maps the second
    half to z_2 * exp(s) + t, with (t, s) = net_k(z_1, c): shared networks, per-datapoint
    context c. Parameters per point: [loc (d), raw scale (d), c (context_dim)].
    """

    def __init__(self, site, num_layers: int = 4, hidden: int = 100, context_dim: int | None = None):
        super().__init__(site, context_dim)
        d = site.dim
        self.num_layers = num_layers
        self.split = d // 2
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("perms", torch.stack([torch.randperm(d, generator=generator) for _ in range(num_layers)]))
        self.nets = nn.ModuleList(
            _coupling_net(self.split + self.context_dim, hidden, d - self.split) for _ in range(num_layers)
        )

    def flow(self, params):
        d = self.site.dim
        z, log_q = _sample_base(params, d)
        context = params[..., 2 * d:]
        for perm, net in zip(self.perms, self.nets):
            z = z[..., perm]
            z1, z2 = z[..., :self.split], z[..., self.split:]
            shift, log_scale = _shift_and_log_scale(net, torch.cat([z1, context], -1))
            z = torch.cat([z1, z2 * log_scale.exp() + shift], -1)
            log_q = log_q - log_scale.sum(-1)
        return z, log_q, None

    def inverse_log_prob(self, params, value):
        """log q(value) by running the couplings backwards (RealNVP is invertible)."""
        d = self.site.dim
        loc, scale = _base(params, d)
        context = params[..., 2 * d:].expand(value.shape[:-1] + (self.context_dim,))
        z, log_det = value, 0.0
        for perm, net in zip(reversed(self.perms), reversed(self.nets)):
            z1, z2 = z[..., :self.split], z[..., self.split:]
            shift, log_scale = _shift_and_log_scale(net, torch.cat([z1, context], -1))
            z = torch.cat([z1, (z2 - shift) * (-log_scale).exp()], -1)
            log_det = log_det + log_scale.sum(-1)
            z = z[..., torch.argsort(perm)]
        eps = (z - loc) / scale
        return _std_normal_log_prob(eps) - scale.log().sum(-1) - log_det


class AuxiliaryFlowNormal(ContextFlowFamily):
    """The auxiliary-variable flow q_AF of Cremer, Li & Duvenaud (2018), Section 3.2.

    z_0 ~ N(loc, diag scale^2); v_0 ~ N(mu(z_0, c), diag sigma(z_0, c)^2); K steps of
    v <- v * exp(s_1) + t_1 with (t_1, s_1) = f_k(z, c), then z <- z * exp(s_2) + t_2 with
    (t_2, s_2) = g_k(v, c). The joint density is
    log q(z_T, v_T | x) = log q(z_0) + log q(v_0 | z_0) - sum_k (sum s_1 + sum s_2).
    ``sample`` emits z_T at the site (with that joint density) and v_T at ``aux_<site>``
    (``AuxiliaryDraw``: density 0, scored only after r); ``guides.auxiliary.with_auxiliary`` adds
    r(v_T | z_T, x) to the model.
    Parameters per point: [loc (d), raw scale (d), c (context_dim)]; networks are shared.
    """

    def __init__(self, site, num_steps: int = 2, hidden: int = 100, context_dim: int | None = None,
                 aux_dim: int | None = None):
        super().__init__(site, context_dim)
        d = site.dim
        self.aux_dim = aux_dim if aux_dim is not None else d
        self.num_steps = num_steps
        self.v0_net = _coupling_net(d + self.context_dim, hidden, self.aux_dim)
        self.v_nets = nn.ModuleList(_coupling_net(d + self.context_dim, hidden, self.aux_dim) for _ in range(num_steps))
        self.z_nets = nn.ModuleList(_coupling_net(self.aux_dim + self.context_dim, hidden, d) for _ in range(num_steps))

    @property
    def aux_name(self) -> str:
        return f"aux_{self.site.name}"

    def flow(self, params):
        d = self.site.dim
        z, log_q = _sample_base(params, d)
        context = params[..., 2 * d:]
        v_loc, v_log_scale = _shift_and_log_scale(self.v0_net, torch.cat([z, context], -1))
        eta = torch.randn_like(v_loc)
        v = v_loc + v_log_scale.exp() * eta
        log_q = log_q + _std_normal_log_prob(eta) - v_log_scale.sum(-1)
        for v_net, z_net in zip(self.v_nets, self.z_nets):
            shift, log_scale = _shift_and_log_scale(v_net, torch.cat([z, context], -1))
            v = v * log_scale.exp() + shift
            log_q = log_q - log_scale.sum(-1)
            shift, log_scale = _shift_and_log_scale(z_net, torch.cat([v, context], -1))
            z = z * log_scale.exp() + shift
            log_q = log_q - log_scale.sum(-1)
        return z, log_q, v

    def joint_log_prob(self, params, z, v) -> torch.Tensor:
        """log q(z_T, v_T | x) at any (z_T, v_T), by running the steps backwards (each step is affine
        in one variable given the other, so it inverts in closed form): what DReG needs to score a
        particle with the parameters held fixed."""
        d = self.site.dim
        loc, scale = _base(params, d)
        context = params[..., 2 * d:].expand(z.shape[:-1] + (self.context_dim,))
        log_det = 0.0
        for v_net, z_net in reversed(list(zip(self.v_nets, self.z_nets))):
            shift, log_scale = _shift_and_log_scale(z_net, torch.cat([v, context], -1))
            z = (z - shift) * (-log_scale).exp()
            log_det = log_det + log_scale.sum(-1)
            shift, log_scale = _shift_and_log_scale(v_net, torch.cat([z, context], -1))
            v = (v - shift) * (-log_scale).exp()
            log_det = log_det + log_scale.sum(-1)
        v_loc, v_log_scale = _shift_and_log_scale(self.v0_net, torch.cat([z, context], -1))
        eta = (v - v_loc) * (-v_log_scale).exp()
        eps = (z - loc) / scale
        return (_std_normal_log_prob(eps) - scale.log().sum(-1) + _std_normal_log_prob(eta) - v_log_scale.sum(-1)
                - log_det)

    def sample(self, params):
        q = self.distribution(params)
        z = pyro.sample(self.site.name, q)
        pyro.sample(self.aux_name, AuxiliaryDraw(q.extra, event_dim=1))
        return z
