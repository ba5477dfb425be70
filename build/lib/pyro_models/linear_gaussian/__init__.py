"""The linear-Gaussian model (probabilistic PCA): log p(x) and p(z | x) in closed form."""
from .model import LinearGaussian, LinearGaussianConfig

__all__ = ["LinearGaussian", "LinearGaussianConfig"]
