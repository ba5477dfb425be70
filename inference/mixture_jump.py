"""A Metropolis-Hastings move between the components of a Gaussian-mixture prior, for AIS.

Why: HMC follows gradients and does not cross the low-density valleys between well-separated
components of a mixture prior (MFCVAE's facets). At small beta the tempered target is nearly the
prior, so chains that cannot change component leave forward AIS biased low and BDMC's reverse
chains (which start in the component that generated the data) biased high by up to log K nats
per site, whatever the number of steps. Measured on a 2-facet MFCVAE with 3 clusters 3 s.d.
apart: the bracket stayed 1.7 nats wide at 100, 400 and 1,600 steps without this move.

The move, per (chain, point) and per mixture site: draw a component c from its responsibility
at z, a different component c' uniformly, map z' = mu_c' + L_c' L_c^-1 (z - mu_c) (L the
components' Cholesky factors), and accept with probability

    min(1, pi_beta(z') r_c'(z') |det L_c'| / (pi_beta(z) r_c(z) |det L_c|)).

The map from (z, c, c') to (z', c', c) is its own inverse and the uniform choice of c' is
symmetric, so this is a valid reversible-jump-style MH step: it leaves every tempered target
pi_beta invariant, which is all AIS and reverse AIS ask of a kernel.

Supported components: ``Independent(Normal, 1)``, ``MultivariateNormal`` and scalar ``Normal``
whose parameters the site's distribution holds (they may change with other latents: they are
read from the trace at z and at z'). Other mixtures get no jump.
"""
import torch
from torch.distributions import Independent, MixtureSameFamily, MultivariateNormal, Normal


def gaussian_mixture_parts(fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(log weights (..., K), means (..., K, d), Cholesky factors (..., K, d, d)) of a Gaussian
    mixture distribution, or None for any other distribution."""
    if not isinstance(fn, MixtureSameFamily):
        return None
    log_weights = torch.log_softmax(fn.mixture_distribution.logits, -1)
    component = fn.component_distribution
    if isinstance(component, MultivariateNormal):
        return log_weights, component.loc, component.scale_tril
    if isinstance(component, Independent) and isinstance(component.base_dist, Normal) \
            and component.reinterpreted_batch_ndims == 1:
        return log_weights, component.base_dist.loc, torch.diag_embed(component.base_dist.scale)
    if isinstance(component, Normal):
        return log_weights, component.loc.unsqueeze(-1), component.scale.unsqueeze(-1).unsqueeze(-1)
    return None


def log_responsibilities(parts, z: torch.Tensor) -> torch.Tensor:
    """log p(c | z) for every component c, shape (..., K); z has shape (..., d)."""
    log_weights, loc, tril = parts
    joint = MultivariateNormal(loc, scale_tril=tril).log_prob(z.unsqueeze(-2)) + log_weights
    return torch.log_softmax(joint, -1)


def _pick(values: torch.Tensor, index: torch.Tensor, event_dims: int) -> torch.Tensor:
    """values[..., index, *event] with index (...) broadcast against values' batch dims."""
    batch = torch.broadcast_shapes(values.shape[:values.dim() - event_dims - 1], index.shape)
    values = values.expand(*batch, *values.shape[values.dim() - event_dims - 1:])
    index = index.expand(batch).reshape(*batch, 1, *([1] * event_dims))
    index = index.expand(*batch, 1, *values.shape[values.dim() - event_dims:])
    return values.gather(len(batch), index).squeeze(len(batch))


def propose(parts, z: torch.Tensor):
    """Draw (c, c') and map z; returns z', c', log r_c(z) and log |det L_c'| - log |det L_c|."""
    log_resp = log_responsibilities(parts, z)
    k = log_resp.shape[-1]
    c = torch.distributions.Categorical(logits=log_resp).sample()
    c_new = (c + torch.randint_like(c, 1, k)) % k  # uniformly among the other components
    _, loc, tril = parts
    loc_c, loc_new = _pick(loc, c, 1), _pick(loc, c_new, 1)
    tril_c, tril_new = _pick(tril, c, 2), _pick(tril, c_new, 2)
    white = torch.linalg.solve_triangular(tril_c, (z - loc_c).unsqueeze(-1), upper=False)
    z_new = loc_new + (tril_new @ white).squeeze(-1)
    log_det = lambda tril: tril.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)  # noqa: E731
    return z_new, c_new, log_resp.gather(-1, c.unsqueeze(-1)).squeeze(-1), log_det(tril_new) - log_det(tril_c)
