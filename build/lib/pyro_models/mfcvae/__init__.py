"""MFCVAE (Falck et al., NeurIPS 2021): model.py (the Pyro program), ladder.py and conv_ladder.py
(its networks), experiment.py (progressive training, GMM initialisation, evaluation),
clustering.py (accuracy, NMI) and plots.py (the paper's figures)."""
from .model import MFCVAE, MFCVAEConfig

__all__ = ["MFCVAE", "MFCVAEConfig"]
