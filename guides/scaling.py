"""Per-site log-density scaling shared by models and guides (KL annealing, progressive training)."""
from collections.abc import Mapping

import torch
from pyro import poutine


def latent_scale(name: str, latent_scales: Mapping[str, float] | None):
    """``poutine.scale`` context for site ``name``: the runner's schedule reaches model and guide
    alike through the ``latent_scales`` argument, so both sides of a KL term are scaled together.

    A weight of exactly 0 masks the site instead (``poutine.scale`` rejects 0): its log-densities
    leave the objective on both sides, which is the limit of the scaled objective, not an
    approximation of it. The sample is still drawn, so downstream sites see a value."""
    scale = 1.0 if latent_scales is None else latent_scales.get(name, 1.0)
    if not isinstance(scale, torch.Tensor) and scale == 0:
        return poutine.mask(mask=False)
    return poutine.scale(scale=scale)
