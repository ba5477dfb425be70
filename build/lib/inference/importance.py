"""Importance-sampling evaluation: ELBO, IWAE-K and effective sample size per data point.

Memory is bounded by ``max_rows`` (particles x data points per forward pass): data points are
taken in chunks and, within a chunk, particles are drawn in sub-chunks whose log-weights are
kept (K x chunk floats) and reduced once all K are in. Nothing is summed over data points before
the log-mean-exp.
"""
import math
from dataclasses import dataclass

import pyro
import torch
from tqdm.auto import tqdm

from .log_weights import DATA_PLATE, log_weights


@dataclass
class ImportanceResult:
    """Per-datapoint estimates (each a tensor of length N)."""

    elbo: torch.Tensor  # mean over K of log w: an unbiased estimate of the ELBO
    iwae: torch.Tensor  # log (1/K) sum_k w_k: the IWAE-K lower bound on log p(x)
    ess: torch.Tensor  # (sum w)^2 / sum w^2, between 1 and K
    num_particles: int
    elbo_mc_var: torch.Tensor | None = None  # per point: var(log w) / K, the Monte Carlo variance of elbo
    iwae_mc_var: torch.Tensor | None = None  # per point: var(w / mean w) / K, the delta-method variance of iwae

    def summary(self, prefix: str) -> dict:
        """Means over data points with their standard errors, as flat JSON-ready floats."""
        n = self.elbo.numel()
        out = {}
        for key in ("elbo", "iwae", "ess"):
            values = getattr(self, key).double()
            out[f"{prefix}_{key}"] = values.mean().item()
            if key != "ess":
                out[f"{prefix}_{key}_se"] = (values.std() / math.sqrt(n)).item() if n > 1 else float("nan")
        return out


def reduce_log_weights(lw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(K, N) log-weights -> per-datapoint (ELBO, IWAE-K, ESS)."""
    k = lw.shape[0]
    lse = torch.logsumexp(lw, dim=0)
    ess = torch.exp(2 * lse - torch.logsumexp(2 * lw, dim=0))
    return lw.mean(0), lse - math.log(k), ess


def monte_carlo_variances(lw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, N) log-weights -> per-point variances of the ELBO and IWAE-K estimates given the point
    (see inference.gap.estimates.Estimate)."""
    k = lw.shape[0]
    if k < 2:
        nan = torch.full(lw.shape[1:], float("nan"), dtype=torch.float64)
        return nan, nan.clone()
    lw = lw.double()
    ratio = (lw - torch.logsumexp(lw, 0) + math.log(k)).exp()
    return lw.var(0) / k, ratio.var(0) / k


def mc_se(mc_var: torch.Tensor) -> float:
    """Monte Carlo standard error of the mean over points, from per-point variances."""
    return (mc_var.double().sum().sqrt() / mc_var.numel()).item()


def point_se(value: torch.Tensor) -> float:
    """Standard error of the mean over points from their spread (the choice of the subset)."""
    n = value.numel()
    return (value.double().std() / math.sqrt(n)).item() if n > 1 else math.nan


@torch.no_grad()
def evaluate_importance(
    model,
    guide,
    data: dict,
    num_particles: int,
    max_plate_nesting: int = 1,
    max_rows: int = 32768,
    point_chunk: int = 256,
    progress: bool = False,
    desc: str = "importance sampling",
    data_plate: str = DATA_PLATE,
    device: torch.device | None = None,
    parallel=None,
) -> ImportanceResult:
    """Estimate ELBO, IWAE-K and ESS for every data point in ``data`` (a dict of tensors whose
    first dimension indexes data points; it is passed to model and guide as keyword arguments).
    ``data_plate``: the model's per-datapoint plate. ``device``: where each chunk of points is
    moved (default: the device of the guide's parameters, when the guide is a module); the
    per-point results come back on the CPU.

    ``parallel`` (inference.training.parallel.Parallel): the chunks of points are divided among the
    processes in contiguous index ranges (never padded), each chunk draws from its own random
    stream, and every process gets all the results in order: the same numbers as one process
    with ``parallel`` of one process."""
    if device is None and isinstance(guide, torch.nn.Module):
        device = next((p.device for p in guide.parameters()), None)
    n = next(iter(data.values())).shape[0]
    point_chunk = max(1, min(point_chunk, n, max_rows))
    particle_chunk = max(1, min(num_particles, max_rows // point_chunk))
    results = []
    starts = range(0, n, point_chunk)
    mine = starts if parallel is None else parallel.my_range(len(starts))
    for c in tqdm(mine, desc=desc, disable=not progress, leave=False):
        start = c if parallel is None else starts[c]
        if parallel is not None:
            parallel.seed_evaluation(c)
        batch = {key: value[start:start + point_chunk].to(device) if device is not None else value[start:start + point_chunk]
                 for key, value in data.items()}
        chunks = []
        for done in range(0, num_particles, particle_chunk):
            k = min(particle_chunk, num_particles - done)
            with pyro.validation_enabled(not results and not chunks):  # check the first pass only
                chunks.append(log_weights(model, guide, k, max_plate_nesting, data_plate=data_plate, **batch))
        lw = torch.cat(chunks).cpu()
        results.append((*reduce_log_weights(lw), *monte_carlo_variances(lw)))
    if parallel is not None:
        results = parallel.gather(results)
    elbo, iwae, ess, elbo_var, iwae_var = (torch.cat(parts) for parts in zip(*results))
    return ImportanceResult(elbo=elbo, iwae=iwae, ess=ess, num_particles=num_particles,
                            elbo_mc_var=elbo_var, iwae_mc_var=iwae_var)
