"""Per-site log-density scaling shared by models and guides (KL annealing, progressive training)."""
from collections.abc import Mapping

from pyro import poutine


def latent_scale(name: str, latent_scales: Mapping[str, float] | None):
    """``poutine.scale`` context for site ``name``: the runner's schedule reaches model and guide
    alike through the ``latent_scales`` argument, so both sides of a KL term are scaled together."""
    scale = 1.0 if latent_scales is None else latent_scales.get(name, 1.0)
    return poutine.scale(scale=scale)
