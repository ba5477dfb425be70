"""Generative models as plain Pyro programs (no training logic, no file I/O)."""
from .linear_gaussian import LinearGaussian, LinearGaussianConfig
from .vae import VAE, VAEConfig

__all__ = ["LinearGaussian", "LinearGaussianConfig", "VAE", "VAEConfig"]
