"""The latent factor language model of the VI tutorial: model.py (bits -> LSTM character decoder),
data.py (SIGMORPHON 2016 Spanish), gap.py (exact enumeration of the 2^K codes), baselines.py
(REINFORCE baselines, free nats), evaluation.py (NLL, perplexity, early stopping, greedy decodes),
plots.py and experiment.py (the command line's glue)."""
from .model import LatentFactorModel, LFMConfig

__all__ = ["LatentFactorModel", "LFMConfig"]
