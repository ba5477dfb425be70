"""What the command line needs from each model: its settings, data, guides, and evaluation.

An ``Experiment`` is the glue between a model (a plain Pyro program in ``pyro_models``), the
guide families, the runner and the estimators. The CLI and the runner are the same for all.
"""
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pyro_models.core import derived, setting  # noqa: F401  (re-exported for experiment settings)


def set_threads(threads: int) -> None:
    """torch's intra-op threads for this process; 0 leaves torch's default. (Small networks on a
    shared 2-core machine ran 4x faster with one thread per run than with two.)"""
    if threads > 0:
        torch.set_num_threads(threads)


@dataclass
class TrainDefaults:
    steps: int
    batch_size: int
    lr: float
    log_every: int = 100
    checkpoint_every: int = 1000


@dataclass
class Built:
    """Everything ``build`` makes: the modules hold every trained parameter; ``info``: facts
    about the data the plots and metrics need (e.g. MFCVAE's label names)."""

    model: nn.Module
    guide: nn.Module | None
    objective: object
    modules: dict
    info: dict = field(default_factory=dict)


@dataclass
class EvaluationPlan:
    """What the final evaluation computes, in words, and its cost in single-point forward passes
    of model and guide (the CLI turns that into seconds at the run's own training speed)."""

    description: str
    point_passes: float


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
    guide_note: str = ""  # which guide families apply, and why (--help and the error for another one)
    # --eval quick: evaluation settings in proportion to a short run (the settings' defaults are
    # the paper's protocol, --eval paper); empty when the paper's evaluation is already cheap.
    quick_evaluation: dict = {}
    # evaluate() runs in every process of a data-parallel run, passing built.info["parallel"] to
    # its estimators (which divide the points), and writes no file: only the main one writes.
    shards_evaluation: bool = False
    supports_local_guide: bool = False
    supports_gap_report: bool = False  # run/gap.py applies (evaluation_points is implemented)
    own_gap_estimator: bool = False  # gap_estimates is implemented (else AIS, IWAE and local q* apply)
    # --precision bf16 (inference/precision.py: network layers in bfloat16 in training) is allowed only
    # where a bf16 run was measured to train as the float32 one does; bf16_note says why not otherwise.
    supports_bf16: bool = False
    bf16_note: str = "its training has not been measured in bfloat16"

    def train_defaults(self, dataset: str) -> TrainDefaults:
        raise NotImplementedError

    def validate(self, config, settings, dataset: str, guide: str | None = None, local: bool = False) -> None:
        """Refuse (ValueError, one line naming the flag) settings that only this model can judge,
        with the run's guide family and ``--local``; called before any data are read or any file
        is written."""

    def fit_to_length(self, config, settings, dataset: str, steps: int, given: set[str]):
        """The settings for a run of ``steps`` (e.g. schedules that must fit in it); ``given``: the
        settings named on the command line. ValueError (one line) where they cannot fit."""
        return settings

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

    def evaluation_plan(self, built: Built, data, settings, batch_size: int) -> EvaluationPlan | None:
        """What ``evaluate`` will compute with these settings and what it costs (None: not estimated)."""
        return None

    def plot(self, built: Built, data, out_dir: Path) -> list[Path]:
        return []

    # --- the gap report (run/gap.py), where ``supports_gap_report`` ---------------------------
    def evaluation_points(self, data, num_points: int, split: str = "train") -> dict:
        """The first ``num_points`` points of a split as model keyword arguments."""
        raise NotImplementedError

    def max_evaluation_points(self, data) -> int | None:
        """The most points ``evaluation_points`` can give (None: the split's size caps it)."""
        return None

    def model_program(self, built: Built):
        """The program the guide is scored against (the model; plus r(v|z,x) for auxiliary guides)."""
        return built.model.model

    def gap_estimates(self, built: Built, points: dict, options):
        """The model's own ``GapEstimates`` (e.g. by enumerating discrete latents), where
        ``own_gap_estimator``."""
        raise NotImplementedError

    def exact_log_px(self, built: Built, points: dict):
        """log p(x) per point in closed form, where the model has one (None otherwise)."""
        return None
