"""Per-point log-densities of a guide site that holds every point's latents in one vector.

Pyro's AutoDiagonalNormal, AutoMultivariateNormal and AutoLowRankMultivariateNormal sample one
auxiliary site outside the data plate: a Gaussian over the unconstrained latents of all points,
concatenated site after site in the order of the Delta sites that follow it (``_unpack_latent``).
Per-point importance weights need each point's *marginal* q(u_i): it exists in closed form for
these Gaussians (the diagonal's coordinates, or a block of the covariance), and a joint draw's
block is a draw from it, so log p(x_i, z_i) - log q_i(z_i) is a valid per-point weight (its ELBO
is the sum of per-point bounds, at least the joint ELBO). A guide whose density couples points in
no closed form (AutoIAFNormal) gets no per-point weight and is refused.
"""
import torch
from pyro import distributions as dist

JOINT_REFUSAL = (
    "the guide's auxiliary site {name!r} holds every point's latents in one vector, outside the {plate!r} plate, "
    "and {why}, so there are no per-point weights (AutoDiagonalNormal, AutoMultivariateNormal and "
    "AutoLowRankMultivariateNormal are served; AutoIAFNormal is not); use AutoNormal, or guides.build_guide")


def _gaussian(fn):
    """(kind, distribution) of a Gaussian joint site, or None."""
    if isinstance(fn, dist.Independent) and isinstance(fn.base_dist, dist.Normal) and fn.reinterpreted_batch_ndims == 1:
        return "diagonal", fn.base_dist
    if isinstance(fn, (dist.MultivariateNormal, dist.LowRankMultivariateNormal)):
        return "full", fn
    return None


def point_of_each_coordinate(trace, name: str, data_plate: str, rank: int) -> torch.Tensor:
    """For each coordinate of the joint site's vector, the data point it belongs to."""
    size = trace.nodes[name]["fn"].event_shape[0]
    names = list(trace.nodes)
    parts, total = [], 0
    for other in names[names.index(name) + 1:]:
        site = trace.nodes[other]
        if site["type"] != "sample" or not isinstance(site["fn"], dist.Delta) or site["infer"].get("is_auxiliary"):
            continue
        dims = {frame.name: frame.dim for frame in site["cond_indep_stack"]}
        if data_plate not in dims:
            raise ValueError(JOINT_REFUSAL.format(name=name, plate=data_plate,
                                                  why=f"its site {other!r} lies outside that plate"))
        shape = site["value"].shape[site["value"].dim() - site["fn"].event_dim - (rank - 1):]  # no particles dim
        axis = len(shape) - site["fn"].event_dim + dims[data_plate]
        index = torch.arange(shape[axis]).reshape([-1 if d == axis else 1 for d in range(len(shape))])
        parts.append(index.expand(shape).reshape(-1))
        total += shape.numel()
        if total >= size:
            break
    if total != size:
        raise ValueError(JOINT_REFUSAL.format(name=name, plate=data_plate, why=(
            "its coordinates do not match its sites' values one to one (a constrained site of another size)")))
    return torch.cat(parts)


def per_point_log_prob(trace, name: str, data_plate: str, rank: int) -> torch.Tensor:
    """log q_i(u_i) of the joint site ``name`` for every particle and point: (particles, points)."""
    site = trace.nodes[name]
    gaussian = _gaussian(site["fn"])
    if gaussian is None:
        raise ValueError(JOINT_REFUSAL.format(name=name, plate=data_plate, why=(
            f"its {type(site['fn']).__name__} has no per-point marginal in closed form")))
    kind, fn = gaussian
    point = point_of_each_coordinate(trace, name, data_plate, rank).to(site["value"].device)
    value = site["value"].reshape(site["value"].shape[0], -1, point.numel())[:, 0]  # (particles, coordinates)
    points = int(point.max()) + 1
    if kind == "diagonal":
        loc, scale = (t.reshape(-1, point.numel())[0] for t in (fn.loc.expand_as(site["value"]),
                                                                 fn.scale.expand_as(site["value"])))
        log_prob = dist.Normal(loc, scale).log_prob(value)
        return torch.zeros(value.shape[0], points, dtype=log_prob.dtype, device=log_prob.device).index_add_(
            1, point, log_prob)
    per_point = torch.bincount(point, minlength=points)
    if (per_point != per_point[0]).any():
        raise ValueError(JOINT_REFUSAL.format(name=name, plate=data_plate,
                                              why="its points hold different numbers of coordinates"))
    blocks = torch.argsort(point, stable=True).reshape(points, -1)  # (points, coordinates per point)
    loc = fn.loc.reshape(-1, point.numel())[0][blocks]
    covariance = fn.covariance_matrix.reshape(-1, point.numel(), point.numel())[0]
    block_covariance = covariance[blocks.unsqueeze(-1), blocks.unsqueeze(-2)]
    return dist.MultivariateNormal(loc, covariance_matrix=block_covariance).log_prob(value[:, blocks])
