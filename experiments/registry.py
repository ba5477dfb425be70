"""The models the command line knows, by name."""
from .compile import CompILEExperiment
from .density import LinearGaussianExperiment, VAEExperiment

EXPERIMENTS = {experiment.name: experiment for experiment in (VAEExperiment(), LinearGaussianExperiment())}
EXPERIMENTS[CompILEExperiment.name] = CompILEExperiment()
from .lfm import LFMExperiment  # noqa: E402

EXPERIMENTS[LFMExperiment.name] = LFMExperiment()
from .mfcvae import MFCVAEExperiment  # noqa: E402

EXPERIMENTS[MFCVAEExperiment.name] = MFCVAEExperiment()
from .cpc import CPCExperiment  # noqa: E402

EXPERIMENTS[CPCExperiment.name] = CPCExperiment()
