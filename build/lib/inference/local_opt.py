"""Local optimisation of q*: per data point, the best member of the amortised guide's family.

The local guide has the same families as the amortised one (the *same module objects*, so any
network a family shares across data points, e.g. RealNVP's coupling networks, is the trained
one) and a table of per-datapoint parameter vectors (``guides.LocalParams``), started from the
amortised guide's output or from the prior. Only the table is optimised (Adam on the ELBO
summed over points, which separates into one problem per point); the model and every shared
network are frozen. Optimisation stops when the bound, averaged over the last ``check_every``
steps and over the points, improved by less than ``tol`` nats per point since the previous window
(a per-point test would never stop: one point's windowed mean is noisier than any useful tol).
"""
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from tqdm.auto import tqdm

from guides import Guide, LocalParams
from pyro_models.core import device_of

from .log_weights import DATA_PLATE, log_weights


@dataclass
class LocalOptSettings:
    init: str = "amortised"  # "amortised": start from the encoder's output; "prior": from p(z)
    lr: float = 1e-2
    num_particles: int = 10  # samples per point per step for the ELBO gradient
    max_steps: int = 3000
    check_every: int = 100
    tol: float = 0.01  # nats per point: stop when the windowed mean bound rose by less than this


@dataclass
class LocalOptResult:
    guide: Guide  # the local guide holding q*, called with idx = 0..N-1
    steps: int
    wall_s: float
    history: list = field(default_factory=list)  # mean ELBO over points per window
    converged: bool = False  # stopped by the stopping rule (False: by max_steps)

    def points_guide(self):
        """q* as a guide of the data alone (model keyword arguments, no ``idx``), for the N points
        it was fitted to, in their order."""
        table = self.guide.source.table
        return partial(self.guide, idx=torch.arange(table.shape[0], device=table.device))


@contextmanager
def frozen(modules):
    """Switch off requires_grad for every parameter of ``modules``; restored on exit."""
    params = {id(p): p for m in modules for p in m.parameters()}.values()
    saved = [(p, p.requires_grad) for p in params]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def local_guide_like(guide: Guide, num_points: int, init_params: torch.Tensor | None = None) -> Guide:
    """A local guide of the same families (shared modules) as ``guide``, one row per point,
    initialised at ``init_params`` (N, param_dim) or at each family's prior parameters; the table
    is on ``guide``'s device."""
    prior_row = torch.cat([family.prior_params() for family in guide.families]).to(device_of(guide))
    local = Guide(list(guide.families), LocalParams(num_points, prior_row), plate_name=guide.plate_name)
    if init_params is not None:
        local.source.set_rows(torch.arange(num_points), init_params)
    return local


def optimise_local(model, guide: Guide, batch: dict, settings: LocalOptSettings = LocalOptSettings(),
                   frozen_modules=(), max_plate_nesting: int = 1, progress: bool = False,
                   data_plate: str = DATA_PLATE) -> LocalOptResult:
    """q* for every point of ``batch`` (model keyword arguments; an ``idx`` there is dropped, the
    points are numbered 0..N-1 for the local table and only the guide sees those numbers, so the
    model need not take an ``idx`` argument). ``model`` is the program the guide is scored against
    (with the auxiliary reverse model for auxiliary guides); ``frozen_modules`` are held fixed."""
    batch = {k: v for k, v in batch.items() if k != "idx"}
    n = next(iter(batch.values())).shape[0]
    if settings.init == "amortised":
        with torch.no_grad():
            init = guide.params(**batch)
    elif settings.init == "prior":
        init = None
    else:
        raise ValueError(f"unknown local initialisation {settings.init!r}; choose from: amortised, prior")
    local = local_guide_like(guide, n, init)
    local_guide = partial(local, idx=torch.arange(n, device=local.source.table.device))
    optimizer = torch.optim.Adam([local.source.table], lr=settings.lr)
    started = time.perf_counter()
    window, previous, history, step, converged = [], None, [], 0, False
    with frozen([*frozen_modules, guide]), warnings.catch_warnings(), tqdm(total=settings.max_steps, desc="local q*", disable=not progress, leave=False) as bar:
        warnings.filterwarnings("ignore", message=".*not registered in the param store because requires_grad=False")
        while step < settings.max_steps:
            optimizer.zero_grad(set_to_none=True)
            elbo = log_weights(model, local_guide, settings.num_particles, max_plate_nesting, data_plate=data_plate,
                               **batch).mean(0)
            (-elbo.sum()).backward()
            optimizer.step()
            window.append(elbo.detach())
            step += 1
            bar.update(1)
            if step % settings.check_every == 0:
                current = torch.stack(window).mean(0)
                history.append(current.mean().item())
                window = []
                if previous is not None and (current - previous).mean().item() < settings.tol:
                    converged = True
                    break
                previous = current
    local.eval()
    return LocalOptResult(guide=local, steps=step, wall_s=time.perf_counter() - started, history=history,
                          converged=converged)
