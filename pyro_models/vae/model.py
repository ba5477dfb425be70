"""The Bernoulli-decoder VAE of Cremer, Li & Duvenaud (ICML 2018), "Inference Suboptimality in
Variational Autoencoders": z in R^50 with a standard normal prior, decoder 50-200-200-784 with
ELU activations (their reference code's ``act_func=F.elu``), Bernoulli likelihood."""
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_models.core import (
    AT_LEAST_ONE,
    DATA_PLATE,
    LatentSite,
    NamedModule,
    batch_size_of,
    data_plate,
    derived,
    latent_scale,
    setting,
)
from pyro_models.likelihoods import BernoulliLogits
from pyro_models.networks import KeywordInput, mlp


@dataclass
class VAEConfig:
    data_dim: int = derived(784)
    latent_dim: int = setting(50, "dimension of z", valid=AT_LEAST_ONE)
    decoder_hidden: tuple[int, ...] = setting((200, 200), "decoder hidden layer sizes")
    encoder_hidden: tuple[int, ...] = setting((200, 200), "encoder hidden layer sizes (amortised guides)")


class VAE(NamedModule):
    """p(z) = N(0, I), p(x | z) = prod_d Bernoulli(x_d | sigmoid(decoder(z))_d)."""

    max_plate_nesting = 1

    def __init__(self, config: VAEConfig | None = None, name: str | None = None, plate_name: str = DATA_PLATE):
        super().__init__()
        self.config = config = config or VAEConfig()
        self._claim_name(name, "vae")
        self.plate_name = plate_name
        self.decoder = mlp([config.latent_dim, *config.decoder_hidden, config.data_dim])

    @property
    def latent_sites(self) -> tuple[LatentSite, ...]:
        return (LatentSite("z", self.config.latent_dim),)

    def make_encoder(self) -> tuple[nn.Module, int]:
        """The paper's inference network body, data_dim-200-200; guides add their own head."""
        sizes = [self.config.data_dim, *self.config.encoder_hidden]
        return KeywordInput(mlp(sizes, activate_last=True)), sizes[-1]

    def model(self, x: torch.Tensor | None = None, idx: torch.Tensor | None = None, latent_scales=None,
              batch_size: int | None = None, num_data: int | None = None) -> torch.Tensor:
        """z ~ N(0, I) and x | z ~ Bernoulli(sigmoid(decoder(z))) for each point, inside the plate
        ``plate_name``; sites ``z`` (batch, latent_dim) and ``x`` (batch, data_dim).

        ``x``: binary images (batch, data_dim), observed; ``None`` samples them (give
        ``batch_size``). ``idx``/``num_data``: subsampling (see ``pyro_models.core.data_plate``).
        ``latent_scales``: {"z": weight}, KL annealing. Returns the decoder's logits."""
        self.register_with_pyro()
        batch = batch_size_of(x, idx, batch_size)
        zero = self.decoder[0].weight.new_zeros(())
        prior = dist.Normal(zero, 1.0).expand([batch, self.config.latent_dim])
        with data_plate(self.plate_name, batch, idx, num_data):
            with latent_scale("z", latent_scales):
                z = pyro.sample("z", prior.to_event(1))
            logits = self.decoder(z)
            pyro.sample("x", BernoulliLogits(logits).to_event(1), obs=x)
        return logits
