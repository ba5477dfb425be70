"""Batches computed ahead in DataLoader worker processes, so reading and decoding data (FLAC for
LibriSpeech) overlaps the training step instead of stalling it.

``PrefetchedBatches(batch_for_step, workers)`` is called like the function it wraps,
``(step, rows=None)``, and returns exactly what it would: worker processes compute the steps
that follow the one asked, in order. This is exact only for a batch function that is a pure
function of (step, rows), declared by ``takes_rows = True``: one drawing from the global random
state (e.g. dynamic binarisation) would draw from the workers' state instead, so it is refused.
"""
import pickle
import signal
import sys
import traceback
import weakref

import torch
from torch.utils.data import DataLoader, Dataset


class PrefetchedBatches:
    """``batch_for_step(step, rows)``, computed ahead by ``workers`` processes (0: in this one),
    ``prefetch`` batches per worker. The first call starts at its step (a resume at step n), each
    next step follows; another step or other rows restart the workers there."""

    takes_rows = True

    def __init__(self, batch_for_step, workers: int, prefetch: int = 2):
        if not getattr(batch_for_step, "takes_rows", False):
            raise ValueError(f"{batch_for_step!r} is not declared a pure function of (step, rows) (takes_rows = True): "
                             "a batch drawn from the global random state cannot be computed in another process")
        if workers < 0 or prefetch < 1:
            raise ValueError(f"workers must be zero or more and prefetch at least 1, got {workers} and {prefetch}")
        self.batch_for_step, self.workers, self.prefetch = batch_for_step, workers, prefetch
        self._loader = _Loader()
        # the workers stop when this object is collected or at interpreter exit, whichever is first
        self._finalizer = weakref.finalize(self, self._loader.stop)

    @property
    def batch_size(self):
        return self.batch_for_step.batch_size

    def __call__(self, step: int, rows: range | None = None) -> dict:
        if self.workers == 0:
            return self.batch_for_step(step, rows)
        if self._loader.position != (step, rows):
            self._loader.start(self, step, rows)
        try:
            batch = next(self._loader.iterator)
        except BaseException:  # a dead worker, an interrupt: no worker outlives the failure
            self.close()
            raise
        self._loader.position = (step + 1, rows)
        if isinstance(batch, _Failure):
            self.close()
            batch.reraise()
        return batch

    def close(self) -> None:
        """Stop the worker processes (a later call starts them again)."""
        self._loader.stop()


class _Loader:
    """The running DataLoader iterator and the (step, rows) it gives next; kept apart from
    ``PrefetchedBatches`` so the finaliser that stops it holds no reference to that."""

    def __init__(self):
        self.iterator, self.position = None, None

    def start(self, owner: PrefetchedBatches, step: int, rows: range | None) -> None:
        self.stop()
        loader = DataLoader(_Steps(owner.batch_for_step, rows), batch_size=None, sampler=range(step, sys.maxsize),
                            num_workers=owner.workers, prefetch_factor=owner.prefetch, collate_fn=_as_is,
                            worker_init_fn=_init_worker, pin_memory=torch.cuda.is_available(),
                            # its own generator: making an iterator draws a seed, which must not come from
                            # (and shift) the training process's global random state
                            generator=torch.Generator().manual_seed(0))
        self.iterator, self.position = iter(loader), (step, rows)

    def stop(self) -> None:
        iterator, self.iterator, self.position = self.iterator, None, None
        if iterator is not None:
            iterator._shutdown_workers()  # joins (or terminates) the workers now, not at garbage collection


class _Steps(Dataset):
    """Map-style: item ``step`` is that step's batch (rows ``rows``); a worker's exception comes
    back as a value, so that it is raised here with its own message."""

    def __init__(self, batch_for_step, rows: range | None):
        self.batch_for_step, self.rows = batch_for_step, rows

    def __getitem__(self, step: int):
        try:
            return self.batch_for_step(step, self.rows)
        except Exception as error:  # noqa: BLE001 (any exception: raised again in the training process)
            return _Failure(error)


class _Failure:
    """An exception in a worker. DataLoader would re-raise it with the worker's traceback in the
    message (a screen of text for one corrupt file); this keeps the one-line message and puts
    the traceback in a note, shown only when the traceback is."""

    def __init__(self, error: Exception):
        self.error_type, self.message = type(error), str(error)
        try:  # a class that cannot be pickled would be lost on the way, and the training process would wait
            pickle.dumps(self.error_type)
        except Exception:  # noqa: BLE001 (pickling can fail in many ways)
            self.error_type, self.message = RuntimeError, f"{type(error).__name__}: {error}"
        self.where = "".join(traceback.format_exception(error))

    def reraise(self):
        try:
            error = self.error_type(self.message)
        except Exception:  # noqa: BLE001 (an exception that is not built from its message alone)
            error = RuntimeError(f"{self.error_type.__name__}: {self.message}")
        error.add_note(f"raised in a data worker process:\n{self.where}")
        raise error


def _as_is(batch):
    return batch


def _init_worker(worker_id: int) -> None:
    torch.set_num_threads(1)  # the cores belong to the training step; a worker only decodes and crops
    # Ctrl-C reaches the whole process group: the training process stops at a step boundary
    # (and closes the workers); a worker dying first would turn that into a DataLoader error
    signal.signal(signal.SIGINT, signal.SIG_IGN)
