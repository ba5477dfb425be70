"""Minibatches as a pure function of the step, so a resumed run sees the same batches."""
import torch


class EpochBatches:
    """Shuffled minibatch indices; epoch e uses a permutation seeded by (seed, e).

    The ragged tail of each epoch is dropped (a different tail each epoch), so every batch has
    the same size: decaying-average baselines and per-point losses rely on that.
    """

    def __init__(self, num_points: int, batch_size: int, seed: int):
        if batch_size > num_points:
            raise ValueError(f"batch size {batch_size} is larger than the training set ({num_points} points)")
        self.num_points, self.batch_size, self.seed = num_points, batch_size, seed
        self.per_epoch = num_points // batch_size
        self._epoch, self._order = None, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.num_points, generator=generator)
        return self._order[position * self.batch_size:(position + 1) * self.batch_size]
