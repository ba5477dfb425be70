"""Mean-field (fully factorised) families: diagonal Gaussian for real sites, independent
Bernoulli bits for binary sites."""
import torch
import torch.nn.functional as F
from pyro import distributions as dist

from pyro_models.core import softplus_inverse

from .family import Family


class MeanFieldNormal(Family):
    """q(z) = N(loc, diag(scale^2)); parameters are ``[loc, softplus^-1(scale - min_scale)]``."""

    supports = ("real",)
    min_scale = 1e-4

    @property
    def param_dim(self) -> int:
        return 2 * self.site.dim

    def distribution(self, params: torch.Tensor):
        loc, raw_scale = params.split(self.site.dim, dim=-1)
        scale = F.softplus(raw_scale) + self.min_scale
        return dist.Normal(loc, scale).to_event(1)

    def prior_params(self) -> torch.Tensor:
        """Parameters of N(0, I), the starting point of a local guide initialised at the prior."""
        loc = torch.zeros(self.site.dim)
        raw = torch.full((self.site.dim,), softplus_inverse(1.0 - self.min_scale))
        return torch.cat([loc, raw])


class MeanFieldBernoulli(Family):
    """q(z) = prod_k Bernoulli(z_k | sigmoid(logit_k)) for binary sites; parameters are the logits.

    Not reparameterisable: Trace/TraceGraph_ELBO use the score function (REINFORCE), with
    baselines through ``Guide(site_infer=...)``."""

    supports = ("binary",)

    @property
    def param_dim(self) -> int:
        return self.site.dim

    def distribution(self, params: torch.Tensor):
        return dist.Bernoulli(logits=params).to_event(1)

    def prior_params(self) -> torch.Tensor:
        """Logits 0: Bernoulli(0.5), the starting point of a local guide."""
        return torch.zeros(self.site.dim)
