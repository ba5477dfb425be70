"""A guide family: a distribution over one latent site's event, given a flat parameter vector.

How the parameters are produced is separate (see ``sources.py``): an encoder gives an amortised
guide, a free table indexed by data point id gives the local guide of the same family. That
symmetry is what makes the amortisation gap, ELBO(local q*) - ELBO(amortised q), well defined.
"""
import pyro
import torch
from torch import nn

from pyro_models.core import LatentSite


class Family(nn.Module):
    """Base class. Subclasses set ``supports`` and implement the three members below."""

    supports: tuple[str, ...] = ()

    def __init__(self, site: LatentSite):
        super().__init__()
        if site.support not in self.supports:
            raise ValueError(
                f"{type(self).__name__} does not apply to site {site.name!r} with "
                f"{site.support} support (it supports: {', '.join(self.supports)})"
            )
        self.site = site

    @property
    def param_dim(self) -> int:
        """Length of the parameter vector per data point."""
        raise NotImplementedError

    def distribution(self, params: torch.Tensor):
        """Distribution with batch shape ``params.shape[:-1]`` and event shape ``(site.dim,)``."""
        raise NotImplementedError

    def prior_params(self) -> torch.Tensor:
        """A parameter vector (``param_dim``,) matching the model's prior, for local guides."""
        raise NotImplementedError

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        """The guide's ``pyro.sample`` statement(s) for this site (inside the ``data`` plate).
        Families that also emit auxiliary sites (the auxiliary flow) override this."""
        return pyro.sample(self.site.name, self.distribution(params))
