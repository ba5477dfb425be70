"""Data-parallel training whose result does not depend on the number of processes.

Each step's global batch is cut into ``shards`` equal pieces (a number fixed for the run). Shard
k of step t draws its random numbers from its own stream, seeded by (seed, t, k), so the noise a
shard sees (reparameterisation, REINFORCE samples, negatives, dropout) is the same whichever
process runs it. With N processes (``torchrun --nproc_per_node N``), each takes ``shards / N``
consecutive shards and accumulates their gradients; the gradients are then summed across
processes (by DistributedDataParallel where the loss goes through a module's forward, by an
explicit all-reduce where the objective runs its own backward, as TraceGraph_ELBO does) and
divided by ``shards``: the mean over the global batch, as one process running every shard gets.
N = 1, 2, 4 with the same ``shards`` give the same run up to floating-point summation order.

An objective whose terms reach across the batch (InfoNCE drawing negatives from every window:
``global_batch = True``) is not cut into shards: each process computes its rows in one pass, the
rows' encodings are gathered with gradients (``BatchRows.gather``), and its anchors are scored
against the whole batch's. It gives the same numbers as one process with the whole batch.

State that an objective updates outside the optimiser (TraceGraph_ELBO's decaying-average
baseline in Pyro's param store) is handled the same way: every shard starts from the step's
value, and the step ends with the mean of the shards' updates.
"""
import inspect
import os
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

SIGNATURE_OF_DDP = inspect.signature(DistributedDataParallel)
BATCH_STREAM = -1  # stream index of the batch itself (e.g. dynamic binarisation)
LOG_STREAM = -2  # stream index of the metrics computed at a log step
EVALUATION_STEP = 2**31 - 1  # the "step" of evaluation's streams (one per chunk of points)


@dataclass
class Parallel:
    """The run's data parallelism: this process's ``rank`` of ``world_size``, ``shards`` per step."""

    shards: int
    seed: int
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # where collectives' tensors live (NCCL: the GPU)

    def __post_init__(self):
        if self.shards < 1 or self.shards % self.world_size:
            raise ValueError(f"--shards {self.shards} must be a positive multiple of the number of processes "
                             f"({self.world_size})")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def my_shards(self) -> range:
        per_rank = self.shards // self.world_size
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)

    def seed_stream(self, step: int, stream: int) -> None:
        """Seed torch's (and Pyro's) global generator for (run seed, step, stream)."""
        state = np.random.SeedSequence([self.seed, step, stream + 2]).generate_state(2, dtype=np.uint32)
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))

    def my_range(self, items: int) -> range:
        """This process's contiguous share of ``items`` (sizes differ by at most one; no padding)."""
        per, extra = divmod(items, self.world_size)
        lo = self.rank * per + min(self.rank, extra)
        return range(lo, lo + per + (self.rank < extra))

    def seed_evaluation(self, chunk: int) -> None:
        """Seed the global generator for an evaluation chunk: the same draws whichever process runs it."""
        self.seed_stream(EVALUATION_STEP, chunk)

    # --- collectives (no-ops in one process) ----------------------------------------------
    def gather(self, items: list) -> list:
        """Every process's list, concatenated in rank order (on every process)."""
        if not self.distributed:
            return items
        everyone = [None] * self.world_size
        dist.all_gather_object(everyone, [[t.cpu() for t in item] if isinstance(item, tuple) else item
                                          for item in items])
        return [tuple(item) if isinstance(item, list) else item for part in everyone for item in part]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process (e.g. a stop request: every process stops)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast_state(self, modules: dict) -> None:
        """Every module's parameters and buffers as the main process holds them: its log
        callbacks may have changed state the others never saw (the LFM's best-so-far copy)."""
        if self.distributed:
            for module in modules.values():
                for tensor in module.state_dict().values():  # views of the module's own storage
                    if torch.is_tensor(tensor):  # (extra state, e.g. ParamStoreEntries', is kept equal by the runner)
                        dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def rows_of(batch: dict, rows: range) -> dict:
    """Rows ``rows`` of every tensor with the batch's first dimension; other values as they are."""
    size = next(v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.dim() > 0)
    return {key: value[rows.start:rows.stop] if torch.is_tensor(value) and value.dim() > 0
            and value.shape[0] == size else value for key, value in batch.items()}


def shard_rows(size: int, shards: range, count: int) -> range:
    """The rows of a batch of ``size`` that shards ``shards`` (of ``count`` equal ones) hold."""
    if size % count:
        raise ValueError(f"the batch of {size} cannot be cut into {count} equal shards: choose a --batch-size that "
                         f"--shards divides")
    per_shard = size // count
    return range(shards.start * per_shard, shards.stop * per_shard)


def shard_of(batch: dict, shard: int, shards: int) -> dict:
    """Rows [shard * B / shards, (shard + 1) * B / shards) of every tensor with the batch's first
    dimension B; other values are passed as they are."""
    size = next(v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.dim() > 0)
    return rows_of(batch, shard_rows(size, range(shard, shard + 1), shards))


@dataclass
class BatchRows:
    """Which rows of the step's batch this process holds, and how to see everyone's: what a
    ``global_batch`` objective's loss receives as ``rows``."""

    start: int
    total: int
    parallel: "Parallel | None" = None

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's ``tensor`` (its rows), concatenated in rank order; gradients flow back."""
        if self.parallel is None or not self.parallel.distributed:
            return tensor
        return _GatherRows.apply(tensor, self.parallel)


class _GatherRows(torch.autograd.Function):
    """all_gather forward; backward sums every process's gradient for the gathered tensor and
    keeps this process's rows (an all-reduce: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, tensor, parallel):
        ctx.rank, ctx.rows = parallel.rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(parallel.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None


def from_environment(shards: int | None, seed: int, device: torch.device) -> Parallel | None:
    """The run's parallelism: torchrun's environment (RANK, WORLD_SIZE) starts the process group;
    ``shards`` defaults to the number of processes. None: one process and no --shards (the
    unsharded loop, whose random stream runs on from step to step)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and not shards:
        return None
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("PYRO_LVM_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    return Parallel(shards=shards or world_size, seed=seed, rank=rank, world_size=world_size, device=device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sum_gradients(params: list, parallel: Parallel) -> None:
    """Sum every parameter's gradient over the processes, in one flat all-reduce. A parameter
    with a gradient on any process gets one (zeros where it had none) on all, and one with none
    anywhere keeps None (Adam then leaves it alone, as it would in one process)."""
    if not parallel.distributed:
        return
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=parallel.device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    used = [p for p, flag in zip(params, present.tolist()) if flag]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if used:
        flat = torch.cat([p.grad.reshape(-1) for p in used])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in used:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


class _ObjectiveModule(nn.Module):
    """The modules and the objective as one module whose forward is the loss: what
    DistributedDataParallel wraps so that it sees the backward pass and all-reduces the gradients
    in buckets while it runs."""

    def __init__(self, modules: dict, objective):
        super().__init__()
        self.parts = nn.ModuleDict(modules)
        self.objective = objective

    def forward(self, batch: dict, schedule: dict) -> torch.Tensor:
        return self.objective.loss_tensor(batch, **schedule)


def data_parallel(objective, modules: dict, parallel: Parallel):
    """DistributedDataParallel over the objective, where it applies: several processes and a loss
    that goes through a forward (``objective.differentiable``). None otherwise: the explicit
    all-reduce of ``sum_gradients`` then sums the gradients."""
    if not parallel.distributed or not getattr(objective, "differentiable", False):
        return None
    device_ids = [parallel.device.index or 0] if parallel.device.type == "cuda" else None
    # find_unused_parameters: MFCVAE's facets not yet faded in (and parameters no shard used)
    # get no gradient (DDP warns once where every parameter is used: the cost is one graph walk
    # per step). No buffer sync before each forward: every process holds the same buffers already
    # (newer torch names this forward_sync_buffers and deprecates broadcast_buffers).
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in SIGNATURE_OF_DDP.parameters
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(_ObjectiveModule(modules, objective), device_ids=device_ids,
                                   find_unused_parameters=True, **no_buffer_sync)


def ddp_shard_losses(ddp, shards_batches, kwargs: dict, parallel: Parallel, before_shard) -> float:
    """Each local shard's loss, back-propagated through DistributedDataParallel: gradients are
    accumulated locally (``no_sync``) and all-reduced with the last shard. DDP averages over the
    N processes, so each shard's loss is scaled by N / shards: the result is the mean over the
    global batch, as in one process."""
    total, scale = 0.0, parallel.world_size / parallel.shards
    for i, (shard, batch) in enumerate(shards_batches):
        before_shard(shard)
        last = i == len(shards_batches) - 1
        with nullcontext() if last else ddp.no_sync():
            loss = ddp(batch, kwargs)
            (loss * scale).backward()
        total += loss.item()
    return total
