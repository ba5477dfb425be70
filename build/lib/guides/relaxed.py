"""Relaxed (concrete) families for binary sites: straight-through Bernoulli samples.

``ConcreteBernoulli`` draws a relaxed sample s = sigmoid((logit + logistic noise) / temperature)
and returns the hard bit round(s) in the forward pass, with the gradient of s in the backward
pass (straight through, as Pyro's ``RelaxedBernoulliStraightThrough``). Unlike that class, the
density is the one of the hard bit, Bernoulli(sigmoid(logit)): round(s) = 1 exactly when
logit + noise > 0, which has probability sigmoid(logit) at any temperature. So log q is exact,
importance weights stay valid, and the KL to a Bernoulli prior is analytic
(``TraceMeanField_ELBO``); only the gradient of the reconstruction term is biased.
"""
import torch
from pyro import distributions as dist
from pyro.distributions.relaxed_straight_through import QuantizeBernoulli
from torch.distributions.utils import clamp_probs

from .family import Family


class StraightThroughBernoulli(dist.Bernoulli):
    """Bernoulli(logits) whose ``rsample`` is a straight-through concrete sample."""

    has_rsample = True

    def __init__(self, logits, temperature: float = 1.0, validate_args=None):
        super().__init__(logits=logits, validate_args=validate_args)
        self.temperature = temperature

    def expand(self, batch_shape, _instance=None):
        new = StraightThroughBernoulli(self.logits.expand(torch.Size(batch_shape)), self.temperature)
        return new

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        u = clamp_probs(torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device))
        soft = torch.sigmoid((self.logits.expand(shape) + u.log() - (-u).log1p()) / self.temperature)
        return QuantizeBernoulli.apply(clamp_probs(soft))

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)


class ConcreteBernoulli(Family):
    """Independent straight-through concrete bits; parameters are the logits."""

    supports = ("binary",)

    def __init__(self, site, temperature: float = 1.0):
        super().__init__(site)
        self.temperature = temperature

    @property
    def param_dim(self) -> int:
        return self.site.dim

    def distribution(self, params: torch.Tensor):
        return StraightThroughBernoulli(params, self.temperature).to_event(1)

    def prior_params(self) -> torch.Tensor:
        return torch.zeros(self.site.dim)
