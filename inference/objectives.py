"""Objectives the runner steps: each computes a scalar loss for one batch and its gradients.

A Pyro ELBO (Trace_ELBO, TraceGraph_ELBO with baselines, TraceEnum_ELBO, ...) and a plain
differentiable loss (e.g. InfoNCE) are interchangeable to the runner.
"""
from collections.abc import Callable

import pyro
import torch
from pyro import poutine


def batch_size_of(batch: dict) -> int:
    for value in batch.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("cannot tell the batch size: the batch holds no tensor with a batch dimension")


class ElboObjective:
    """Negative ELBO per data point, for any Pyro ELBO.

    ELBOs with ``differentiable_loss`` (Trace_ELBO, TraceMeanField_ELBO, TraceEnum_ELBO) give a
    loss that is divided by the batch size and back-propagated here; the others (TraceGraph_ELBO,
    RenyiELBO) only have ``loss_and_grads``, so model and guide are scaled by 1/batch instead.
    Either way loss and gradients are per data point, and gradient clipping means the same thing
    at any batch size.

    Pyro's validation (shapes, supports, model/guide agreement) runs on the first call only;
    after that the checks cost time and find nothing new.
    """

    def __init__(self, elbo, model: Callable, guide: Callable):
        self.elbo = elbo
        self.model = model
        self.guide = guide
        self.validated = False

    def __call__(self, batch: dict, **schedule) -> float:
        per_point = 1.0 / batch_size_of(batch)
        with pyro.validation_enabled(not self.validated):
            if hasattr(self.elbo, "differentiable_loss"):
                loss = self.elbo.differentiable_loss(self.model, self.guide, **batch, **schedule) * per_point
                loss.backward()
                loss = loss.item()
            else:
                model = poutine.scale(self.model, scale=per_point)
                guide = poutine.scale(self.guide, scale=per_point)
                loss = self.elbo.loss_and_grads(model, guide, **batch, **schedule)
        self.validated = True
        return loss


class LossObjective:
    """Any differentiable scalar ``loss_fn(**batch, **schedule)``; the runner minimises it."""

    def __init__(self, loss_fn: Callable[..., torch.Tensor]):
        self.loss_fn = loss_fn

    def __call__(self, batch: dict, **schedule) -> float:
        loss = self.loss_fn(**batch, **schedule)
        loss.backward()
        return loss.item()
