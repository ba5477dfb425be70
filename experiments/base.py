"""What the command line needs from each model: its settings, data, guides, and evaluation.

An ``Experiment`` is the glue between a model (a plain Pyro program in ``pyro_models``), the
guide families, the runner and the estimators. The CLI and the runner are the same for all.
"""
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pyro_models.settings import derived, setting  # noqa: F401  (re-exported for experiment settings)


@dataclass
class TrainDefaults:
    steps: int
    batch_size: int
    lr: float
    log_every: int = 100
    checkpoint_every: int = 1000


@dataclass
class Built:
    """Everything ``build`` makes: the modules hold every trained parameter."""

    model: nn.Module
    guide: nn.Module | None
    objective: object
    modules: dict


class Experiment:
    """Subclasses fill in the class attributes and the methods below."""

    name: str = ""
    description: str = ""
    config_cls: type = None  # the model's hyperparameters, paper defaults (pyro_models)
    settings_cls: type = None  # the experiment's own settings (evaluation, schedules)
    datasets: tuple[str, ...] = ()
    default_dataset: str = ""
    guides: tuple[str, ...] = ()
    default_guide: str | None = None
    supports_local_guide: bool = False

    def train_defaults(self, dataset: str) -> TrainDefaults:
        raise NotImplementedError

    def load_data(self, dataset: str, data_dir):
        raise NotImplementedError

    def build(self, config, settings, data, guide: str | None, local: bool) -> Built:
        raise NotImplementedError

    def batches(self, data, batch_size: int, seed: int):
        """A function step -> batch (a dict of model keyword arguments)."""
        raise NotImplementedError

    def steps_per_epoch(self, data, batch_size: int) -> int:
        raise NotImplementedError

    def schedule(self, settings, built: Built):
        """None, or a function step -> extra keyword arguments for model and guide."""
        return None

    def on_log(self, built: Built, data, settings):
        """None, or a function step -> extra metrics for the log row."""
        return None

    def evaluate(self, built: Built, data, settings, out_dir: Path, progress: bool) -> dict:
        """Final metrics for summary.json (``out_dir`` holds metrics.csv; other files may go there)."""
        raise NotImplementedError

    def plot(self, built: Built, data, out_dir: Path) -> list[Path]:
        return []
