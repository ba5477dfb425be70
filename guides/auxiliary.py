"""Auxiliary-variable guides in Pyro: the model gains the reverse model r(v | z, x).

A guide with an auxiliary variable v samples (z, v) from q(z, v | x); the bound is
E_q[log p(x, z) + log r(v | z, x) - log q(z, v | x)] <= log p(x) for any r. In Pyro the guide
emits v at a site (``aux_<latent>``) and ``with_auxiliary(model, reverse)`` is the model with
that site added, scored by r. ELBOs, ``inference.log_weights`` and IWAE need no change.

Against the bare model the guide's v would count as a latent of q that p never scores, and the
"bound" could exceed log p(x): so v's site (``AuxiliaryDraw``) refuses to be scored unless the
reverse model has scored its value first, which ``with_auxiliary`` does, before any ELBO scores
the guide (Pyro's ELBOs trace the guide, replay the model against it, then score both).
"""
import pyro
import torch
from pyro import distributions as dist
from pyro import poutine
from pyro.poutine.broadcast_messenger import BroadcastMessenger
from pyro.poutine.indep_messenger import IndepMessenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyro_models.core import DATA_PLATE, NamedModule, latent_scale
from pyro_models.networks import ELU

from .sources import call_encoder


def with_auxiliary(model, reverse, data_plate: str = DATA_PLATE):
    """``model`` plus the auxiliary sites sampled by ``reverse(latents, *args, **kwargs)``.

    The model runs under a nested ``poutine.trace`` (every outer handler, replay and plates
    included, still sees each of its sites); its latent values are then handed to ``reverse``,
    which is called inside the model's per-datapoint plate (``data_plate``), scaled by N/B when
    that plate subsamples B of N points, as the model's own sites are.
    """

    def model_with_auxiliary(*args, **kwargs):
        tracer = poutine.trace(model)
        result = tracer(*args, **kwargs)
        latents, frame = {}, None
        for name, site in tracer.trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                continue
            latents[name] = site["value"]
            frame = next((f for f in site["cond_indep_stack"] if f.name == data_plate), frame)
        if frame is None:
            raise ValueError(f"with_auxiliary: the model has no latent site inside a {data_plate!r} plate")
        subsampling = frame.full_size / frame.size if frame.full_size else 1.0  # as the model's plate scales its sites
        with _SamePlate(data_plate, frame.size, dim=frame.dim), poutine.scale(scale=subsampling):
            reverse(latents, *args, **kwargs)
        return result

    return model_with_auxiliary


class _SamePlate(IndepMessenger):
    """Re-enters the model's ``data`` plate (same name, size and dim) without recording a
    second subsample site of that name, which a trace would refuse."""

    def _process_message(self, msg):
        super()._process_message(msg)
        BroadcastMessenger._pyro_sample(msg)


_SCORED = "_scored_by_reverse_model"


class AuxiliaryDraw(dist.Delta):
    """The guide's site for an auxiliary flow's v_T: a Delta (its density is part of its latent's)
    that refuses to be scored unless the reverse model r(v | z, x) has scored the same value."""

    def log_prob(self, x):
        if not getattr(x, _SCORED, False):
            raise ValueError(
                "an auxiliary-flow guide's v was scored without the reverse model r(v | z, x): against the bare "
                "model its bound can exceed log p(x). Give SVI (or the estimator) the model "
                "guides.with_auxiliary(model, guides.auxiliary_reverse_for(guide, encoder, encoder_dim)); to "
                "evaluate q(z, v | x) alone, use AuxiliaryFlowNormal.joint_log_prob")
        return super().log_prob(x)


class AuxiliaryReverse(NamedModule):
    """r(v | z, x) = N(mu, diag sigma^2) from a network of (z, features(x)), one per aux site.

    ``encoder`` (a fresh copy of the model's encoder body, any keyword inputs) gives the data
    features; ``aux_sites`` maps a latent site name to (its dim, the aux site's name and dim).
    """

    def __init__(self, aux_sites: dict, encoder: nn.Module, encoder_dim: int, hidden: int = 100,
                 name: str | None = None):
        super().__init__()
        self._claim_name(name, "aux_reverse")
        self.aux_sites = dict(aux_sites)
        self.encoder = encoder
        self.nets = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(z_dim + encoder_dim, hidden), ELU(), nn.Linear(hidden, hidden),
                                ELU(), nn.Linear(hidden, 2 * v_dim))
            for name, (z_dim, _, v_dim) in self.aux_sites.items()
        })

    def forward(self, latents: dict, *args, latent_scales=None, idx=None, num_data=None, batch_size=None, **kwargs):
        self.register_with_pyro()
        features = call_encoder(self.encoder, args, kwargs)
        for name, (_, aux_name, _) in self.aux_sites.items():
            z = latents[name]
            h = features.expand(z.shape[:-1] + features.shape[-1:])
            loc, raw = self.nets[name](torch.cat([z, h], -1)).chunk(2, dim=-1)
            scale = torch.nn.functional.softplus(raw) + 1e-3
            with latent_scale(name, latent_scales):  # annealed together with its latent
                v = pyro.sample(aux_name, dist.Normal(loc, scale).to_event(1))
            setattr(v, _SCORED, True)  # the guide's own tensor, under replay: its AuxiliaryDraw may now be scored


def auxiliary_reverse_for(guide, encoder: nn.Module, encoder_dim: int) -> AuxiliaryReverse | None:
    """The reverse model a guide needs (None when none of its families has an auxiliary site)."""
    aux = {family.site.name: (family.site.dim, family.aux_name, family.aux_dim)
           for family in guide.families if hasattr(family, "aux_name")}
    return AuxiliaryReverse(aux, encoder, encoder_dim) if aux else None
