"""Guide families usable across models, each amortised (encoder) or local (free per datapoint)."""
from pyro_models.core import LatentSite

from .auxiliary import AuxiliaryReverse, auxiliary_reverse_for, with_auxiliary
from .family import Family
from .flows import AuxiliaryFlowNormal, FlowDistribution, PlanarFlowNormal, RealNVPNormal
from .guide import Guide, build_guide
from .mean_field import MeanFieldBernoulli, MeanFieldNormal
from .refine import RefinedGuide, Refinement
from .registry import GUIDE_FAMILIES, guide_family
from .relaxed import ConcreteBernoulli, StraightThroughBernoulli
from .sources import AmortisedParams, LocalParams

__all__ = [
    "Family", "Guide", "build_guide", "MeanFieldNormal", "GUIDE_FAMILIES",
    "guide_family", "LatentSite", "AmortisedParams", "LocalParams", "AuxiliaryReverse",
    "auxiliary_reverse_for", "with_auxiliary", "AuxiliaryFlowNormal", "FlowDistribution",
    "PlanarFlowNormal", "RealNVPNormal", "MeanFieldBernoulli", "ConcreteBernoulli", "StraightThroughBernoulli",
    "RefinedGuide", "Refinement",
]
