"""The latent factor language model of the VI tutorial: model.py (bits -> LSTM character decoder),
data.py (SIGMORPHON 2016 Spanish), gap.py (exact enumeration of the 2^K codes) and
experiment.py (REINFORCE baselines, free nats, word dropout, evaluation)."""
from .model import LatentFactorModel, LFMConfig

__all__ = ["LatentFactorModel", "LFMConfig"]
