"""Objectives the runner steps: each computes a scalar loss for one batch and its gradients.

A Pyro ELBO (Trace_ELBO, TraceGraph_ELBO with baselines, TraceEnum_ELBO, ...) and a plain
differentiable loss (e.g. InfoNCE) are interchangeable to the runner.
"""
import contextlib
from collections.abc import Callable

import pyro
import torch
from pyro import poutine

from .log_weights import SiteMismatch, check_sites_match


def batch_size_of(batch: dict) -> int:
    for value in batch.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("cannot tell the batch size: the batch holds no tensor with a batch dimension")


class Objective:
    """What the training loop steps. ``objective(batch, **schedule) -> float``: one batch's loss,
    back-propagated. Declared here, with their defaults: ``differentiable`` (``loss_tensor(batch,
    **schedule)`` gives the loss without back-propagating it, so DistributedDataParallel can) and
    ``global_batch`` (the loss reaches across the batch: see ``GlobalBatchLoss``). A plain function
    of the batch is an objective too (neither differentiable nor global)."""

    differentiable: bool = False
    global_batch: bool = False

    def __call__(self, batch: dict, **schedule) -> float:
        raise NotImplementedError

    def loss_tensor(self, batch: dict, **schedule) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} back-propagates its loss itself")


class ElboObjective(Objective):
    """Negative ELBO per data point, for any Pyro ELBO.

    ELBOs with ``differentiable_loss`` (Trace_ELBO, TraceMeanField_ELBO, TraceEnum_ELBO) give a
    loss that is divided by the batch size and back-propagated here; the others (TraceGraph_ELBO,
    RenyiELBO) only have ``loss_and_grads``, so model and guide are scaled by 1/batch instead.
    Either way loss and gradients are per data point, and gradient clipping means the same thing
    at any batch size.

    Pyro's validation (shapes, supports, model/guide agreement) runs on the first call only;
    after that the checks cost time and find nothing new. The first call also refuses a guide
    whose latent sites differ from the model's (``check_sites_match``; Pyro only warns), from
    the traces the ELBO itself made: no extra forward pass, no random draw.
    """

    def __init__(self, elbo, model: Callable, guide: Callable):
        self.elbo = elbo
        self.model = model
        self.guide = guide
        self.validated = False

    def __call__(self, batch: dict, **schedule) -> float:
        if self.validated:
            return self._loss(self.model, self.guide, batch, schedule)
        model, guide = poutine.trace(self.model), poutine.trace(self.guide)  # record what the ELBO runs
        loss = self._loss(model, guide, batch, schedule, check=lambda: check_sites_match(model.trace, guide.trace))
        self.validated = True
        return loss

    @property
    def differentiable(self) -> bool:
        """Whether ``loss_tensor`` exists: the ELBO gives a loss to back-propagate (not TraceGraph_ELBO)."""
        return hasattr(self.elbo, "differentiable_loss")

    def loss_tensor(self, batch: dict, **schedule) -> torch.Tensor:
        """The per-point loss as a tensor, not yet back-propagated (for DistributedDataParallel)."""
        per_point = 1.0 / batch_size_of(batch)
        if self.validated:
            with pyro.validation_enabled(False):
                return self.elbo.differentiable_loss(self.model, self.guide, **batch, **schedule) * per_point
        model, guide = poutine.trace(self.model), poutine.trace(self.guide)
        with pyro.validation_enabled(True), _sites_checked_first(lambda: check_sites_match(model.trace, guide.trace)):
            loss = self.elbo.differentiable_loss(model, guide, **batch, **schedule) * per_point
        check_sites_match(model.trace, guide.trace)
        self.validated = True
        return loss

    def _loss(self, model, guide, batch: dict, schedule: dict, check=None) -> float:
        """``check()`` runs once the traces exist: before the backward pass where the ELBO
        leaves that to us, after it where the ELBO runs it itself."""
        per_point = 1.0 / batch_size_of(batch)
        with pyro.validation_enabled(not self.validated), _sites_checked_first(check):
            if hasattr(self.elbo, "differentiable_loss"):
                loss = self.elbo.differentiable_loss(model, guide, **batch, **schedule) * per_point
                if check is not None:
                    check()
                loss.backward()
                return loss.item()
            loss = self.elbo.loss_and_grads(poutine.scale(model, scale=per_point),
                                            poutine.scale(guide, scale=per_point), **batch, **schedule)
            if check is not None:
                check()
            return loss


@contextlib.contextmanager
def _sites_checked_first(check):
    """A score that fails inside the ELBO (e.g. an auxiliary guide's v scored against a model
    without its reverse site) is most often a model/guide mismatch: say that, if it is one."""
    try:
        yield
    except ValueError as error:
        if check is not None:
            try:
                check()
            except SiteMismatch as mismatch:
                raise mismatch from error
            except Exception:  # the traces are incomplete: the original error is the one to show
                pass
        raise


class LossObjective(Objective):
    """Any differentiable scalar ``loss_fn(**batch, **schedule)``; the runner minimises it."""

    differentiable = True

    def __init__(self, loss_fn: Callable[..., torch.Tensor]):
        self.loss_fn = loss_fn

    def loss_tensor(self, batch: dict, **schedule) -> torch.Tensor:
        return self.loss_fn(**batch, **schedule)

    def __call__(self, batch: dict, **schedule) -> float:
        loss = self.loss_fn(**batch, **schedule)
        loss.backward()
        return loss.item()


class GlobalBatchLoss(LossObjective):
    """A loss whose terms reach across the batch, as InfoNCE's negatives do:
    ``loss_fn(**batch, rows=None, **schedule)``. In a data-parallel run the runner does not cut
    the batch into shards; each process passes its rows in one piece with ``rows``
    (``inference.training.parallel.BatchRows``: where they start, and ``rows.gather(t)`` for every
    process's ``t`` with gradients), so the loss can see the whole batch as one process does."""

    global_batch = True
