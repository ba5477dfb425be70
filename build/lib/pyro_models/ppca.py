"""Probabilistic PCA with an exact log p(x), written as a user would write it, for checking estimators.

``ReplicatedPPCA``: probabilistic PCA, x = W z + b + noise, with R independent replicates of a
user's experiment side by side: replicate r has its own W_r, b_r ~ N(0, 1) and its own points
drawn from the model. Every data point carries its replicate's W and b, so one AIS call runs
all replicates at once (the model takes each point's W and b as data, so any subset of points
works), and the spread of the per-replicate mean errors gives a standard error
of the estimator's bias that does not rely on the points being alike.
"""
import pyro
import pyro.distributions as dist
import torch


class ReplicatedPPCA:
    def __init__(self, replicates: int, points: int, data_dim: int, latent_dim: int, noise: float, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.replicates, self.points, self.latent_dim, self.noise = replicates, points, latent_dim, noise
        weight = torch.randn(replicates, data_dim, latent_dim, generator=g)
        bias = torch.randn(replicates, data_dim, generator=g)
        self.weight = weight.repeat_interleave(points, 0)  # (R * points, D, d): per data point
        self.bias = bias.repeat_interleave(points, 0)
        z = torch.randn(replicates * points, latent_dim, generator=g)
        self.x = self._mean(z, self.weight, self.bias) + noise * torch.randn(replicates * points, data_dim, generator=g)

    @staticmethod
    def _mean(z, weight, bias):
        return (weight @ z.unsqueeze(-1)).squeeze(-1) + bias

    def batch(self, points=slice(None), x=None) -> dict:
        """Model keyword arguments for some of the points (``x``: other data at those points)."""
        return {"x": self.x[points] if x is None else x, "weight": self.weight[points], "bias": self.bias[points]}

    def model(self, x, weight, bias):
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0).expand([x.shape[0], self.latent_dim]).to_event(1))
            pyro.sample("x", dist.Normal(self._mean(z, weight, bias), self.noise).to_event(1), obs=x)

    def log_marginal(self, x=None, weight=None, bias=None) -> torch.Tensor:
        """Exact log p(x) per point: N(b, W W^T + s^2 I) (default: all the points)."""
        x, weight, bias = (self.x, self.weight, self.bias) if x is None else (x, weight, bias)
        cov = weight @ weight.transpose(-1, -2) + self.noise ** 2 * torch.eye(weight.shape[1], device=weight.device)
        return dist.MultivariateNormal(bias, covariance_matrix=cov).log_prob(x)

    def per_replicate(self, per_point: torch.Tensor) -> torch.Tensor:
        """Mean over each replicate's points: (R,)."""
        return per_point.double().reshape(self.replicates, self.points).mean(1)
