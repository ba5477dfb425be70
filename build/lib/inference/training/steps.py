"""One training step's loss and gradients: in one process, or over the step's shards in one or
several processes (inference/training/parallel.py says how a sharded run stays the same run
whatever the number of processes)."""
import torch

from inference.objectives import batch_size_of

from .checkpoint import ParamStoreEntries
from .parallel import (
    BATCH_STREAM,
    BatchRows,
    Parallel,
    data_parallel,
    ddp_shard_losses,
    rows_of,
    shard_of,
    shard_rows,
    sum_gradients,
)


def to_device(batch: dict, device: torch.device | None) -> dict:
    if device is None:
        return batch
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}


class StepLoss:
    """``step_loss(step, kwargs) -> float``: the step's loss, its gradients left in the parameters'
    ``.grad`` (the mean over the step's global batch)."""

    def __init__(self, objective, modules: dict, params: list, batch_for_step, parallel: Parallel | None = None,
                 device=None):
        self.objective, self.params, self.batch_for_step = objective, params, batch_for_step
        self.parallel, self.device = parallel, device
        # State an objective updates outside the optimiser (TraceGraph_ELBO's decaying baseline):
        # every shard starts from the step's value, and the step ends with the mean of the shards'.
        self.shared_state = [m for m in modules.values() if isinstance(m, ParamStoreEntries)]
        self.ddp = data_parallel(objective, modules, parallel) if parallel is not None and not self.shared_state else None

    def __call__(self, step: int, kwargs: dict) -> float:
        if self.parallel is None:
            return self.objective(to_device(self.batch_for_step(step), self.device), **kwargs)
        parallel = self.parallel
        parallel.seed_stream(step, BATCH_STREAM)
        batch, rows, size = self._my_rows(step)
        if getattr(self.objective, "global_batch", False):
            return self._global_batch_loss(to_device(batch, self.device), rows, size, step, kwargs)
        return self._sharded_loss(batch, step, kwargs)

    def _my_rows(self, step: int) -> tuple[dict, range, int]:
        """This process's rows of the step's global batch, which rows they are, and the batch size.
        A batch function that ``takes_rows`` (e.g. one reading audio from disk) reads only those."""
        parallel, batch_for_step = self.parallel, self.batch_for_step
        if getattr(batch_for_step, "takes_rows", False):
            size = batch_for_step.batch_size
            rows = shard_rows(size, parallel.my_shards(), parallel.shards)
            return batch_for_step(step, rows=rows), rows, size
        batch = batch_for_step(step)
        size = batch_size_of(batch)
        rows = shard_rows(size, parallel.my_shards(), parallel.shards)
        return rows_of(batch, rows), rows, size

    def _sharded_loss(self, batch: dict, step: int, kwargs: dict) -> float:
        """Each of this process's shards with its own random stream, summed over the processes."""
        parallel, shared = self.parallel, self.shared_state
        start = [module.get_extra_state() for module in shared]
        sums = [{} for _ in shared]

        def before_shard(shard):
            for module, state in zip(shared, start):
                module.set_extra_state(state)
            parallel.seed_stream(step, shard)

        def after_shard():
            for module, acc in zip(shared, sums):
                for name, value in module.get_extra_state().items():
                    acc[name] = acc[name] + value if name in acc else value.clone()

        mine = parallel.my_shards()
        shards = [(shard, to_device(shard_of(batch, i, len(mine)), self.device)) for i, shard in enumerate(mine)]
        if self.ddp is not None:  # DDP all-reduces the gradients during the last shard's backward pass
            total = ddp_shard_losses(self.ddp, shards, kwargs, parallel, before_shard)
            after_shard()  # (no DDP objective keeps state outside the optimiser)
        else:
            total = 0.0
            for shard, shard_batch in shards:
                before_shard(shard)
                total += self.objective(shard_batch, **kwargs)
                after_shard()
            self._sum_and_divide_gradients(parallel.shards)
        for module, acc in zip(shared, sums):
            module.set_extra_state({name: parallel.sum_(value) / parallel.shards for name, value in sorted(acc.items())})
        loss = parallel.sum_(torch.tensor([total], dtype=torch.float64, device=parallel.device))
        return loss.item() / parallel.shards

    def _global_batch_loss(self, batch: dict, rows: range, size: int, step: int, kwargs: dict) -> float:
        """A loss across the whole batch (``objective.global_batch``): this process's rows in one
        pass, the others' reached through ``BatchRows.gather``. Each process's loss is the mean over
        its rows (equal in number), so the mean over processes is the global batch's mean."""
        parallel = self.parallel
        parallel.seed_stream(step, 0)  # one stream for the step on every process: draws are made for the whole batch
        kwargs = {**kwargs, "rows": BatchRows(rows.start, size, parallel)}
        if self.ddp is not None:  # DDP averages the gradients over the processes
            loss = self.ddp(batch, kwargs)
            loss.backward()
        else:
            loss = self.objective.loss_tensor(batch, **kwargs)
            loss.backward()
            self._sum_and_divide_gradients(parallel.world_size)
        total = parallel.sum_(torch.tensor([loss.item()], dtype=torch.float64, device=parallel.device))
        return total.item() / parallel.world_size

    def _sum_and_divide_gradients(self, count: int) -> None:
        """Gradients summed over the processes (where no DDP did it) and divided by the number of
        losses that were back-propagated: the gradient of their mean."""
        sum_gradients(self.params, self.parallel)
        for p in self.params:
            if p.grad is not None:
                p.grad.div_(count)
