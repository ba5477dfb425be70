"""Guide families usable across models, each amortised (encoder) or local (free per datapoint).

Imports only ``pyro_models``' protocol (``pyro_models.core``): estimators and training live in
``inference``, which uses these families through the names exported here."""
from pyro_models.core import LatentSite

from .auxiliary import AuxiliaryReverse, auxiliary_reverse_for, with_auxiliary
from .family import Family
from .flows import AuxiliaryFlowNormal, FlowDistribution, PlanarFlowNormal, RealNVPNormal
from .guide import Guide, batch_size_of_call, build_guide
from .mean_field import MeanFieldBernoulli, MeanFieldNormal
from .registry import GUIDE_FAMILIES, guide_family
from .relaxed import ConcreteBernoulli, StraightThroughBernoulli
from .sources import AmortisedParams, LocalParams
from .sylvester import SylvesterFlowNormal

__all__ = [
    "Family", "Guide", "build_guide", "batch_size_of_call", "MeanFieldNormal", "GUIDE_FAMILIES",
    "guide_family", "LatentSite", "AmortisedParams", "LocalParams", "AuxiliaryReverse",
    "auxiliary_reverse_for", "with_auxiliary", "AuxiliaryFlowNormal", "FlowDistribution",
    "PlanarFlowNormal", "RealNVPNormal", "SylvesterFlowNormal", "MeanFieldBernoulli", "ConcreteBernoulli", "StraightThroughBernoulli",
]
