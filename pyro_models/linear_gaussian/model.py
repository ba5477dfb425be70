"""Linear-Gaussian latent variable model (probabilistic PCA): the known-answer model.

z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D). Both log p(x) and the posterior p(z | x) are
Gaussian in closed form, so every estimator in ``inference/`` is tested against it first.
"""
import math
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
from pyro_models.networks import KeywordInput, mlp

# s^2 enters the covariance W W^T + s^2 I in float32: beyond 1e9 the closed forms overflow.
NOISE_SCALE = ("positive and at most 1e9 (its square enters the covariance in float32)", lambda value: 0 < value <= 1e9)


@dataclass
class LinearGaussianConfig:
    data_dim: int = derived(8)
    latent_dim: int = setting(2, "dimension of z", valid=AT_LEAST_ONE)
    noise_scale: float = setting(0.5, "initial observation noise s", valid=NOISE_SCALE)
    encoder_hidden: tuple[int, ...] = setting((32,), "encoder hidden layer sizes (amortised guides)")


class LinearGaussian(NamedModule):
    max_plate_nesting = 1

    def __init__(self, config: LinearGaussianConfig | None = None, name: str | None = None,
                 plate_name: str = DATA_PLATE):
        super().__init__()
        self.config = config = config or LinearGaussianConfig()
        self._claim_name(name, "linear_gaussian")
        self.plate_name = plate_name
        self.weight = nn.Parameter(torch.randn(config.data_dim, config.latent_dim) / math.sqrt(config.latent_dim))
        self.bias = nn.Parameter(torch.zeros(config.data_dim))
        self.log_noise = nn.Parameter(torch.tensor(math.log(config.noise_scale)))

    @property
    def latent_sites(self) -> tuple[LatentSite, ...]:
        return (LatentSite("z", self.config.latent_dim),)

    def make_encoder(self) -> tuple[nn.Module, int]:
        sizes = [self.config.data_dim, *self.config.encoder_hidden]
        return KeywordInput(mlp(sizes, activate_last=True)), sizes[-1]

    def model(self, x: torch.Tensor | None = None, idx: torch.Tensor | None = None, latent_scales=None,
              batch_size: int | None = None, num_data: int | None = None) -> None:
        """z ~ N(0, I_d) and x | z ~ N(W z + b, s^2 I_D) for each point, inside the plate
        ``plate_name``; sites ``z`` (batch, d) and ``x`` (batch, D). ``x=None`` samples x (give
        ``batch_size``); ``idx``/``num_data``: subsampling (``pyro_models.core.data_plate``);
        ``latent_scales``: {"z": weight}."""
        self.register_with_pyro()
        batch, d = batch_size_of(x, idx, batch_size), self.config.latent_dim
        with data_plate(self.plate_name, batch, idx, num_data):
            with latent_scale("z", latent_scales):
                z = pyro.sample("z", dist.Normal(self.bias.new_zeros(()), 1.0).expand([batch, d]).to_event(1))
            mean = z @ self.weight.T + self.bias
            pyro.sample("x", dist.Normal(mean, self.log_noise.exp()).to_event(1), obs=x)

    # Closed forms -------------------------------------------------------------------------

    def marginal(self) -> dist.MultivariateNormal:
        """p(x) = N(b, W W^T + s^2 I)."""
        eye = torch.eye(self.config.data_dim, device=self.weight.device)
        cov = self.weight @ self.weight.T + self.log_noise.exp() ** 2 * eye
        return dist.MultivariateNormal(self.bias, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        return self.marginal().log_prob(x)

    def posterior_precision(self) -> torch.Tensor:
        """The precision of p(z | x), the same for every x: I + W^T W / s^2."""
        eye = torch.eye(self.config.latent_dim, device=self.weight.device)
        return eye + self.weight.T @ self.weight / self.log_noise.exp() ** 2

    def posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """p(z | x) = N(S W^T (x - b) / s^2, S) with S = (I + W^T W / s^2)^-1."""
        cov = torch.linalg.inv(self.posterior_precision())
        mean = (x - self.bias) @ self.weight @ cov.T / self.log_noise.exp() ** 2
        return dist.MultivariateNormal(mean, covariance_matrix=cov.expand(x.shape[0], -1, -1))

    def diagonal_gaussian_elbo(self, x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The ELBO of q(z | x) = N(loc, diag scale^2) per point: log p(x) - KL(q || p(z | x)), with
        KL = 1/2 [sum_i L_ii scale_i^2 + (mu - loc)^T L (mu - loc) - d - log det L - sum_i log scale_i^2]
        for the posterior N(mu, L^-1)."""
        precision = self.posterior_precision()
        diff = self.posterior(x).mean - loc
        kl = 0.5 * ((torch.diagonal(precision) * scale ** 2).sum(-1) + ((diff @ precision) * diff).sum(-1)
                    - self.config.latent_dim - torch.logdet(precision) - (scale ** 2).log().sum(-1))
        return self.log_marginal(x) - kl

    def best_diagonal_gaussian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of the diagonal Gaussian closest to p(z | x) in KL(q || p): the posterior
        mean and 1 / sqrt(L_ii). Its KL, the approximation gap of the family, is
        1/2 (sum_i log L_ii - log det L)."""
        precision = self.posterior_precision()
        scale = torch.diagonal(precision).rsqrt().expand(x.shape[0], -1)
        return self.posterior(x).mean, scale
