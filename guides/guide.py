"""The guide program: one family per latent site, parameters from an encoder or a table."""
from collections.abc import Callable, Sequence

import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from torch import nn

from pyro_models.core import DATA_PLATE, LatentSite, NamedModule, batch_size_of, data_plate, latent_scale

from .family import Family
from .sources import AmortisedParams, LocalParams


class Guide(NamedModule):
    """Mean-field across sites: q(z_1..z_S | x) = prod_s q_s(z_s | params_s(x or idx)).

    Called as the model is: data as keyword arguments (``x=...``) or positionally
    (``guide(x)``, as ``SVI.step(x)`` calls it), plus ``idx`` (the points' indices: a local guide's
    rows), ``num_data`` (with ``idx``, Pyro's subsampling plate, as the model's) and
    ``latent_scales`` (annealing). The data go to the encoder.

    ``site_infer`` (optional): ``site_infer(name, data, params) -> dict`` gives the ``infer``
    options of a site's sample statement from the data keyword arguments and the site's
    parameters, e.g. TraceGraph_ELBO baselines ``{"baseline": {...}}``. An ``nn.Module`` (a
    neural baseline) becomes part of the guide: trained, checkpointed and restored with it.

    ``name``: its parameters' prefix in Pyro's param store (unique per instance by default);
    ``plate_name``: the model's per-datapoint plate.
    """

    def __init__(self, families: Sequence[Family], source: nn.Module, site_infer: Callable | None = None,
                 name: str | None = None, plate_name: str = DATA_PLATE):
        super().__init__()
        self.families = nn.ModuleList(families)
        self.source = source
        self.site_infer = site_infer
        self.splits = [family.param_dim for family in families]
        self._claim_name(name, "guide")
        self.plate_name = plate_name

    @property
    def amortised(self) -> bool:
        return self.source.amortised

    def params(self, *args, idx: torch.Tensor | None = None, batch_size: int | None = None, **data) -> torch.Tensor:
        """The flat parameter vectors, (batch, sum of param_dim), before any sampling."""
        return self.source(args, data, idx, batch_size_of_call(args, data, idx, batch_size, required=False))

    def forward(self, *args, idx=None, latent_scales=None, num_data=None, batch_size=None, **data):
        self.register_with_pyro()
        if is_validation_enabled():  # Pyro's checks: the data, before the encoder turns a NaN into a NaN parameter
            check_finite_data(args, data)
        batch = batch_size_of_call(args, data, idx, batch_size)
        with data_plate(self.plate_name, batch, idx, num_data) as indices:
            rows = idx if idx is not None or num_data is None else indices  # a local guide's rows
            params = self.params(*args, idx=rows, batch_size=batch, **data)
            return self.sample_sites(params, data, latent_scales)

    def sample_sites(self, params: torch.Tensor, data: dict, latent_scales=None) -> dict:
        """The sample statement of each site from its slice of the per-point ``params`` (inside the
        caller's data plate); the refined guide calls it with its own refined parameters."""
        values = {}
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


def check_finite_data(args: tuple, data: dict) -> None:
    """Refuse data holding a NaN or an infinity, naming them (ValueError)."""
    named = {**{f"argument {i}": value for i, value in enumerate(args)}, **data}
    for key, value in named.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"the data {key!r} given to the guide hold a NaN or an infinite value: clean the data first")


def batch_size_of_call(args, data: dict, idx, batch_size, required: bool = True) -> int | None:
    """The first dimension of the first data tensor, else the number of indices, else ``batch_size``."""
    for value in (*args, *data.values()):
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    if not required and idx is None and batch_size is None:
        return None
    return batch_size_of(None, idx, batch_size)


def build_guide(
    family_cls: Callable[[LatentSite], Family],
    sites: Sequence[LatentSite],
    *,
    encoder: nn.Module | None = None,
    encoder_dim: int | None = None,
    num_points: int | None = None,
    site_infer: Callable | None = None,
    name: str | None = None,
    plate_name: str = DATA_PLATE,
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
    return Guide(families, source, site_infer, name=name, plate_name=plate_name)
