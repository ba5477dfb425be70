"""The Bernoulli-decoder VAE of Cremer, Li & Duvenaud (ICML 2018), "Inference Suboptimality in
Variational Autoencoders": z in R^50 with a standard normal prior, decoder 50-200-200-784 with
ELU activations (their reference code's ``act_func=F.elu``), Bernoulli likelihood."""
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from guides.scaling import latent_scale
from guides.sites import LatentSite

from .likelihoods import BernoulliLogits
from .networks import KeywordInput, mlp
from .settings import derived, setting


@dataclass
class VAEConfig:
    data_dim: int = derived(784)
    latent_dim: int = setting(50, "dimension of z")
    decoder_hidden: tuple[int, ...] = setting((200, 200), "decoder hidden layer sizes")
    encoder_hidden: tuple[int, ...] = setting((200, 200), "encoder hidden layer sizes (amortised guides)")


class VAE(nn.Module):
    """p(z) = N(0, I), p(x | z) = prod_d Bernoulli(x_d | sigmoid(decoder(z))_d)."""

    max_plate_nesting = 1

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = config
        self.decoder = mlp([config.latent_dim, *config.decoder_hidden, config.data_dim])

    @property
    def latent_sites(self) -> tuple[LatentSite, ...]:
        return (LatentSite("z", self.config.latent_dim),)

    def make_encoder(self) -> tuple[nn.Module, int]:
        """The paper's inference network body, data_dim-200-200; guides add their own head."""
        sizes = [self.config.data_dim, *self.config.encoder_hidden]
        return KeywordInput(mlp(sizes, activate_last=True)), sizes[-1]

    def model(self, x: torch.Tensor, idx=None, latent_scales=None):
        pyro.module("vae", self)
        prior = dist.Normal(x.new_zeros(()), 1.0).expand([x.shape[0], self.config.latent_dim])
        with pyro.plate("data", x.shape[0], dim=-1):
            with latent_scale("z", latent_scales):
                z = pyro.sample("z", prior.to_event(1))
            logits = self.decoder(z)
            pyro.sample("x", BernoulliLogits(logits).to_event(1), obs=x)
        return logits

