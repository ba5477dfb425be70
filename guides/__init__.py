"""Guide families usable across models, each amortised (encoder) or local (free per datapoint)."""
from .family import Family
from .guide import Guide, build_guide
from .mean_field import MeanFieldNormal
from .registry import GUIDE_FAMILIES, applicable_guides, guide_family
from .sites import LatentSite
from .sources import AmortisedParams, LocalParams

__all__ = [
    "Family", "Guide", "build_guide", "MeanFieldNormal", "GUIDE_FAMILIES", "applicable_guides",
    "guide_family", "LatentSite", "AmortisedParams", "LocalParams",
]
