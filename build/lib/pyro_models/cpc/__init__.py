"""Contrastive Predictive Coding (van den Oord et al. 2018): model.py (encoder, GRU, predictors),
data.py (FSDD and LibriSpeech windows), probes.py (linear probes and supervised baselines)
and experiment.py (InfoNCE training and evaluation)."""
from .model import CPC, CPCConfig

__all__ = ["CPC", "CPCConfig"]
