"""Multi-Facet Clustering VAE (Falck et al., NeurIPS 2021) as a plain Pyro program.

J facets; facet j has a cluster c_j ~ Cat(pi_j) and z_j | c_j ~ N(mu_{j,c}, Sigma_{j,c}); x is
decoded from z_0..z_{J-1} by a ladder decoder. The clusters are summed out inside the prior:
each facet's prior is the mixture p(z_j) = sum_c pi_{j,c} N(z_j; mu_{j,c}, Sigma_{j,c}). With
q(c_j | x) := p(c_j | z_j), the paper's 5-term ELBO equals the ELBO of this program term by term
(E_{p(c|z)}[log p(z|c) + log p(c) - log p(c|z)] = log p(z)), and the program has a density
for every z, so importance sampling and AIS apply unchanged.

``facet_fade`` (progressive training) scales each facet's decoder input; ``latent_scales``
weights each facet's KL term; both come from the runner's schedule.
"""
import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import nn

from pyro_models.core import (
    DATA_PLATE,
    POSITIVE,
    LatentSite,
    NamedModule,
    batch_size_of,
    data_plate,
    derived,
    latent_scale,
    setting,
    softplus_inverse,
)
from pyro_models.likelihoods import BernoulliLogits
from pyro_models.mfcvae.ladder import MLPLadderDecoder, MLPLadderEncoder

VARIANCE_SHARPNESS = 10.0  # softplus(beta=10) for variances, as the reference code
MIN_VARIANCE = 1e-5  # keeps the mixture components from collapsing onto a point


@dataclass
class MFCVAEConfig:
    data_dim: int = derived(784)
    image_shape: tuple[int, ...] = derived((28, 28))
    latent_dims: tuple[int, ...] = setting((5, 5), "dimension of z_j per facet (its length is the number of facets J)")
    clusters: tuple[int, ...] = setting((25, 25), "number of clusters K_j per facet")
    covariance: str = setting("diag", "covariance of each cluster's Gaussian", choices=("diag", "full"))
    architecture: str = setting("mlp", "ladder networks: fully connected, or convolutional for 32x32/64x64 colour images",
                                choices=("mlp", "conv"))
    encoder_backbone: tuple[int, ...] = setting((500, 2000), "encoder layer widths; facet j reads layer j (mlp)")
    decoder_rungs: tuple[int, ...] = setting((500, 2000), "decoder rung widths per facet (mlp)")
    decoder_backbone: tuple[int, ...] = setting((500, 500), "decoder backbone widths per facet (mlp)")
    likelihood: str = setting("bernoulli", "p(x | z): Bernoulli, or Gaussian with a fixed scale (colour images)",
                              choices=("bernoulli", "gaussian"))
    gaussian_scale: float = setting(0.35, "standard deviation of the Gaussian likelihood", valid=POSITIVE)
    initial_variance: float = setting(0.01, "variance of every cluster after the GMM initialisation",
                                      valid=POSITIVE)

    def check(self) -> None:
        if len(self.latent_dims) != len(self.clusters):
            raise ValueError(f"--latent-dims {self.latent_dims} and --clusters {self.clusters} need one entry per facet each")
        if self.architecture == "mlp" and not len(self.encoder_backbone) == len(self.latent_dims):
            raise ValueError(f"--encoder-backbone {self.encoder_backbone} needs one width per facet ({len(self.latent_dims)})")


class FacetPrior(dist.MixtureSameFamily):
    """A facet's mixture prior whose support is its components' (real vectors), not
    ``MixtureSameFamily``'s own constraint type: Pyro's ``biject_to`` has no transform for the
    latter, so autoguides (AutoNormal, AutoDiagonalNormal, ...) and NUTS could not handle it."""

    @constraints.dependent_property
    def support(self):
        return self.component_distribution.support

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(FacetPrior, _instance)
        return super().expand(batch_shape, _instance=new)


class MFCVAE(NamedModule):
    max_plate_nesting = 1

    def __init__(self, config: MFCVAEConfig | None = None, name: str | None = None, plate_name: str = DATA_PLATE):
        super().__init__()
        config = config or MFCVAEConfig()
        config.check()
        self.config = config
        self._claim_name(name, "mfcvae")
        self.plate_name = plate_name
        self.num_facets = len(config.latent_dims)
        shapes = list(zip(config.clusters, config.latent_dims))
        self.pi_logits = nn.ParameterList(nn.Parameter(torch.zeros(k)) for k in config.clusters)
        self.means = nn.ParameterList(nn.Parameter(torch.randn(k, d)) for k, d in shapes)
        if config.covariance == "diag":
            self.raw_variances = nn.ParameterList(nn.Parameter(torch.empty(k, d)) for k, d in shapes)
        else:  # lower-triangular scale factors; softplus on the diagonal only
            self.raw_scale_trils = nn.ParameterList(nn.Parameter(torch.empty(k, d, d)) for k, d in shapes)
        with torch.no_grad():
            self._reset_variances()
        self.decoder = self._make_decoder()

    def _make_decoder(self) -> nn.Module:
        c = self.config
        if c.architecture == "conv":
            from pyro_models.mfcvae.conv_ladder import ConvLadderDecoder

            return ConvLadderDecoder(c.image_shape, c.latent_dims)
        return MLPLadderDecoder(c.data_dim, c.latent_dims, c.decoder_rungs, c.decoder_backbone)

    @property
    def latent_sites(self) -> tuple[LatentSite, ...]:
        return tuple(LatentSite(f"z{j}", d) for j, d in enumerate(self.config.latent_dims))

    def make_encoder(self) -> tuple[nn.Module, int]:
        """The ladder encoder; its ``feature_dims`` give each facet its own guide head."""
        c = self.config
        if c.architecture == "conv":
            from pyro_models.mfcvae.conv_ladder import ConvLadderEncoder

            encoder = ConvLadderEncoder(c.image_shape, self.num_facets)
        else:
            encoder = MLPLadderEncoder(c.data_dim, c.encoder_backbone)
        return encoder, sum(encoder.feature_dims)

    # --- the prior -------------------------------------------------------------------------
    def component(self, j: int):
        """p(z_j | c_j) for all clusters at once: batch shape (K_j,), event shape (d_j,)."""
        if self.config.covariance == "diag":
            variance = F.softplus(self.raw_variances[j], beta=VARIANCE_SHARPNESS) + MIN_VARIANCE
            return dist.Normal(self.means[j], variance.sqrt()).to_event(1)
        raw = self.raw_scale_trils[j]
        diagonal = F.softplus(torch.diagonal(raw, dim1=-2, dim2=-1), beta=VARIANCE_SHARPNESS) + MIN_VARIANCE ** 0.5
        scale_tril = torch.tril(raw, diagonal=-1) + torch.diag_embed(diagonal)
        return dist.MultivariateNormal(self.means[j], scale_tril=scale_tril)

    def facet_prior(self, j: int):
        """p(z_j) = sum_c pi_{j,c} p(z_j | c): the clusters summed out."""
        return FacetPrior(dist.Categorical(logits=self.pi_logits[j]), self.component(j))

    def cluster_log_posterior(self, j: int, z: torch.Tensor) -> torch.Tensor:
        """log p(c_j | z_j), shape (..., K_j): the paper's q(c_j | x) evaluated at z_j."""
        joint = self.component(j).log_prob(z.unsqueeze(-2)) + torch.log_softmax(self.pi_logits[j], -1)
        return torch.log_softmax(joint, dim=-1)

    def mixture_weights(self, j: int) -> torch.Tensor:
        return torch.softmax(self.pi_logits[j], -1)

    @torch.no_grad()
    def set_clusters(self, means_per_facet) -> None:
        """Cluster means (one (K_j, d_j) tensor per facet, e.g. a GMM's fitted to encoder
        outputs); variances reset to ``initial_variance``, pi uniform (the paper's initialisation)."""
        for j, means in enumerate(means_per_facet):
            self.means[j].copy_(torch.as_tensor(means, dtype=self.means[j].dtype))
            self.pi_logits[j].zero_()
        self._reset_variances()

    def _reset_variances(self) -> None:
        variance = self.config.initial_variance
        if self.config.covariance == "diag":
            for raw in self.raw_variances:
                raw.fill_(softplus_inverse(variance, VARIANCE_SHARPNESS))
            return
        for raw in self.raw_scale_trils:
            raw.copy_(torch.diag_embed(torch.full(raw.shape[:-1], softplus_inverse(math.sqrt(variance), VARIANCE_SHARPNESS))))

    # --- the program -----------------------------------------------------------------------
    def likelihood(self, logits: torch.Tensor):
        if self.config.likelihood == "gaussian":
            return dist.Normal(torch.sigmoid(logits), self.config.gaussian_scale).to_event(1)
        return BernoulliLogits(logits).to_event(1)

    def model(self, x: torch.Tensor | None = None, idx: torch.Tensor | None = None, latent_scales=None,
              facet_fade=None, batch_size: int | None = None, num_data: int | None = None) -> torch.Tensor:
        """For each point, z_j ~ p(z_j) (facet j's mixture of Gaussians, clusters summed out) and
        x | z_0..z_{J-1} from the ladder decoder, inside the plate ``plate_name``; sites ``z0``,
        ``z1``, ... (batch, d_j) and ``x`` (batch, data_dim).

        ``x=None`` samples images (give ``batch_size``); ``idx``/``num_data``: subsampling
        (``pyro_models.core.data_plate``); ``latent_scales``: {"z0": weight, ...}, each facet's
        KL weight; ``facet_fade``: per-facet decoder input weights (progressive training).
        Returns the decoder's logits."""
        self.register_with_pyro()
        with data_plate(self.plate_name, batch_size_of(x, idx, batch_size), idx, num_data):
            zs = []
            for j, site in enumerate(self.latent_sites):
                with latent_scale(site.name, latent_scales):
                    zs.append(pyro.sample(site.name, self.facet_prior(j)))
            logits = self.decoder(zs, facet_fade)
            pyro.sample("x", self.likelihood(logits), obs=x)
        return logits

    def decode_mean(self, zs) -> torch.Tensor:
        """E[x | z] (pixel probabilities or Gaussian means) for plots."""
        return torch.sigmoid(self.decoder(zs))
