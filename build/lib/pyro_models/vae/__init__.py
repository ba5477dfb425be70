"""The Bernoulli-decoder VAE of Cremer, Li & Duvenaud (ICML 2018), "Inference Suboptimality in
Variational Autoencoders": the model (model.py) and its command-line glue (experiment.py)."""
from .model import VAE, VAEConfig

__all__ = ["VAE", "VAEConfig"]
