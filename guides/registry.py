"""Guide families by the name the command line uses."""
from .flows import AuxiliaryFlowNormal, PlanarFlowNormal, RealNVPNormal
from .mean_field import MeanFieldBernoulli, MeanFieldNormal
from .relaxed import ConcreteBernoulli
from .sylvester import SylvesterFlowNormal

GUIDE_FAMILIES = {
    "ffg": MeanFieldNormal,  # fully factorised Gaussian (Cremer et al.'s q_FFG)
    "planar": PlanarFlowNormal,  # 10 planar steps on a diagonal Gaussian, all per-datapoint
    "realnvp": RealNVPNormal,  # 4 affine couplings, shared networks + per-datapoint context
    "auxflow": AuxiliaryFlowNormal,  # Cremer et al.'s q_AF: auxiliary v, 2 coupling steps, r(v|z,x)
    "sylvester": SylvesterFlowNormal,  # 4 Householder Sylvester steps (M = min(d, 16)), all per-datapoint
    "bernoulli": MeanFieldBernoulli,  # independent bits, score-function gradients (binary sites)
    "concrete": ConcreteBernoulli,  # independent bits, straight-through concrete samples (binary sites)
}


def guide_family(name: str):
    try:
        return GUIDE_FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown guide {name!r}; choose from: {', '.join(GUIDE_FAMILIES)}") from None
