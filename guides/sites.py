"""What a guide needs to know about a model's latent sites."""
from dataclasses import dataclass


@dataclass(frozen=True)
class LatentSite:
    """One latent sample site inside the model's per-datapoint plate ``"data"`` (dim -1).

    ``dim`` is the size of the site's event (its value has shape ``(..., batch, dim)``);
    ``support`` is ``"real"`` or ``"binary"`` and decides which guide families apply.
    """

    name: str
    dim: int
    support: str = "real"
