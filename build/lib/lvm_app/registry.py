"""The models the command line knows, by name."""
from pyro_models.compile.experiment import CompILEExperiment
from pyro_models.cpc.experiment import CPCExperiment
from pyro_models.lfm.experiment import LFMExperiment
from pyro_models.linear_gaussian.experiment import LinearGaussianExperiment
from pyro_models.mfcvae.experiment import MFCVAEExperiment
from pyro_models.vae.experiment import VAEExperiment

EXPERIMENTS = {experiment.name: experiment for experiment in (
    VAEExperiment(), LinearGaussianExperiment(), CompILEExperiment(), LFMExperiment(), MFCVAEExperiment(),
    CPCExperiment())}
