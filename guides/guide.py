"""The guide program: one family per latent site, parameters from an encoder or a table."""
from collections.abc import Callable, Sequence

import pyro
import torch
from pyro import poutine
from torch import nn

from .family import Family
from .scaling import latent_scale
from .sites import LatentSite
from .sources import AmortisedParams, LocalParams


class Guide(nn.Module):
    """Mean-field across sites: q(z_1..z_S | x) = prod_s q_s(z_s | params_s(x or idx)).

    Called with the same keyword arguments as the model (``x=..., idx=..., latent_scales=...``);
    ``idx`` (data point ids) is read only by a local guide, the rest go to the encoder.

    ``site_infer`` (optional): ``site_infer(name, data, params) -> dict`` gives the ``infer``
    options of a site's sample statement from the data keyword arguments and the site's
    parameters, e.g. TraceGraph_ELBO baselines ``{"baseline": {...}}``. An ``nn.Module`` (a
    neural baseline) becomes part of the guide: trained, checkpointed and restored with it.
    """

    def __init__(self, families: Sequence[Family], source: nn.Module, site_infer: Callable | None = None):
        super().__init__()
        self.families = nn.ModuleList(families)
        self.source = source
        self.site_infer = site_infer
        self.splits = [family.param_dim for family in families]

    @property
    def amortised(self) -> bool:
        return self.source.amortised

    def params(self, idx: torch.Tensor | None = None, **data) -> torch.Tensor:
        """The flat parameter vectors, (batch, sum of param_dim), before any sampling."""
        return self.source(data, idx)

    def forward(self, idx=None, latent_scales=None, **data):
        pyro.module("guide", self)
        params = self.params(idx, **data)
        values = {}
        with pyro.plate("data", params.shape[0], dim=-1):
            for family, chunk in zip(self.families, params.split(self.splits, dim=-1)):
                name = family.site.name
                sample = family.sample
                if self.site_infer is not None:
                    config = self.site_infer(name, data, chunk)
                    if config:
                        sample = poutine.infer_config(sample, lambda msg, n=name, c=config: c if msg["name"] == n else {})
                with latent_scale(name, latent_scales):
                    values[name] = sample(chunk)
        return values


def build_guide(
    family_cls: Callable[[LatentSite], Family],
    sites: Sequence[LatentSite],
    *,
    encoder: nn.Module | None = None,
    encoder_dim: int | None = None,
    num_points: int | None = None,
    site_infer: Callable | None = None,
) -> Guide:
    """An amortised guide when given an encoder, a local one when given ``num_points``."""
    families = [family_cls(site) for site in sites]
    if (encoder is None) == (num_points is None):
        raise ValueError("give either an encoder (amortised guide) or num_points (local guide)")
    if encoder is not None:
        source = AmortisedParams(encoder, encoder_dim, [family.param_dim for family in families])
    else:
        initial = torch.cat([family.prior_params() for family in families])
        source = LocalParams(num_points, initial)
    return Guide(families, source, site_infer)
