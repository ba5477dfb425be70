"""The one training loop and what surrounds it (as pythae's trainer owns these, and no model
knows of them): ``loop.py`` (``train``), ``steps.py`` (one step's loss and gradients, in one process
or over shards), ``parallel.py`` (shards, torchrun, DistributedDataParallel), ``checkpoint.py``,
``metrics_log.py`` (metrics.csv), ``precision.py`` (bf16), ``prefetch.py`` (batches read ahead in
worker processes), ``schedules.py`` (annealing, progressive facets)."""
from .loop import TrainingDiverged, TrainingInterrupted, TrainSettings, train

__all__ = ["TrainSettings", "TrainingDiverged", "TrainingInterrupted", "train"]
