"""Generative models as plain Pyro programs (no training logic, no file I/O), one subpackage per
paper, each with its command-line glue beside it (``experiment.py``, built from
``pyro_models.experiment_kit``). Every latent-variable model follows
``pyro_models.core.LatentVariableModel`` (and all but CompILE ``AmortisableModel``)."""
from pyro_models.compile import CompILE, CompILEConfig, CompILEGuide
from pyro_models.core import DATA_PLATE, AmortisableModel, LatentSite, LatentVariableModel, latent_scale
from pyro_models.cpc import CPC, CPCConfig
from pyro_models.lfm import LatentFactorModel, LFMConfig
from pyro_models.linear_gaussian import LinearGaussian, LinearGaussianConfig
from pyro_models.mfcvae import MFCVAE, MFCVAEConfig
from pyro_models.ppca import ReplicatedPPCA
from pyro_models.vae import VAE, VAEConfig

__all__ = [
    "AmortisableModel", "CPC", "CPCConfig", "CompILE", "CompILEConfig", "CompILEGuide", "DATA_PLATE", "LFMConfig", "LatentFactorModel",
    "LatentSite", "LatentVariableModel", "LinearGaussian", "LinearGaussianConfig", "MFCVAE", "MFCVAEConfig",
    "ReplicatedPPCA", "VAE", "VAEConfig", "latent_scale",
]
