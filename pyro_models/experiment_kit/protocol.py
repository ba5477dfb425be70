"""What the command line needs from each model: its settings, data, guides, and evaluation.

An ``Experiment`` is the glue between a model (a plain Pyro program in ``pyro_models``), the
guide families, the training loop and the estimators; the command line (``lvm_app``) is the same
for all. An experiment keeps nothing between calls: every hook receives the run's choices as a
``RunContext`` (its data set, settings, guide, seed, batch size, ...), so two runs in one process
(two seeds, a training run and a gap report) never meet through the experiment.

Hooks that not every experiment has are declared here as ``None`` (``initialise``,
``evaluation_points``, ``gap_estimates``, ...); the command line checks ``is not None`` before
using one, and says why where one is missing (a gap report for CPC, say).
"""
import dataclasses
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


@dataclass(frozen=True)
class RunContext:
    """One run's choices: what every hook of an experiment receives.

    ``config``: the model's settings (its config dataclass); ``settings``: the experiment's own
    (evaluation, schedules); ``seed``, ``batch_size``, ``lr``: the run's training choices (a gap
    report of a saved run gets the saved ones); ``data_dir``: where the data are read
    (``pyro_models.datasets.DataDir``; None: the default data directory)."""

    dataset: str
    config: object
    settings: object
    guide: str | None = None
    local: bool = False
    seed: int = 0
    batch_size: int = 1
    lr: float = 1e-3
    data_dir: object = None

    def replace(self, **changes) -> "RunContext":
        return dataclasses.replace(self, **changes)


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
    """What the final evaluation computes, in words, and its cost: single-point forward passes of
    model and guide, and ``flops`` of other matrix work (CPC's linear probes); the command line turns
    them into seconds on this machine (lvm_app/eval_mode.py)."""

    description: str
    point_passes: float
    flops: float = 0.0


class Experiment:
    """Subclasses fill in the class attributes and the methods below; the optional hooks (declared
    ``None`` here) where the experiment has them."""

    name: str = ""
    description: str = ""
    config_cls: type = None  # the model's hyperparameters, paper defaults (pyro_models)
    settings_cls: type = None  # the experiment's own settings (evaluation, schedules)
    datasets: tuple[str, ...] = ()
    default_dataset: str = ""
    guides: tuple[str, ...] = ()
    default_guide: str | None = None
    guide_note: str = ""  # which guide families apply, and why (--help and the error for another one)
    supports_local_guide: bool = False
    # --eval quick: evaluation settings in proportion to a short run (the settings' defaults are
    # the paper's protocol, --eval paper); empty when the paper's evaluation is already cheap.
    quick_evaluation: dict = {}
    # evaluate() runs in every process of a data-parallel run, passing ``parallel`` to its
    # estimators (which divide the points), and writes no file: only the main one writes.
    shards_evaluation: bool = False
    # --precision bf16 (inference/training/precision.py: network layers in bfloat16 in training) is
    # allowed only where a bf16 run was measured to train as the float32 one does: None there, else why not.
    bf16_refusal: str | None = "its training has not been measured in bfloat16"

    def context(self, data=None, **choices) -> RunContext:
        """A ``RunContext`` with this experiment's defaults (data set, config, settings, guide, the
        data set's batch size and rate) for every choice not given, and, with ``data``, the config's
        fields the data decide: for scripts and tests that build a run without the command line."""
        dataset = choices.pop("dataset", self.default_dataset)
        defaults = self.train_defaults(dataset)
        ctx = RunContext(**{"dataset": dataset, "config": self.config_cls(), "settings": self.settings_cls(),
                            "guide": self.default_guide, "batch_size": defaults.batch_size, "lr": defaults.lr,
                            **choices})
        return ctx if data is None else ctx.replace(config=self.model_config(ctx, data))

    # --- the run ---------------------------------------------------------------------------------
    def train_defaults(self, dataset: str) -> TrainDefaults:
        raise NotImplementedError

    def validate(self, ctx: RunContext) -> None:
        """Refuse (ValueError, one line naming the flag) settings that only this model can judge,
        with the run's guide family and ``--local``; called before any data are read or any file
        is written."""

    def fit_to_length(self, ctx: RunContext, steps: int, given: set[str]):
        """The settings for a run of ``steps`` (e.g. schedules that must fit in it); ``given``: the
        settings named on the command line. ValueError (one line) where they cannot fit."""
        return ctx.settings

    def load_data(self, ctx: RunContext):
        raise NotImplementedError

    def model_config(self, ctx: RunContext, data):
        """The model's config with the fields the data decide (``derived`` ones, e.g. the data's
        dimension) filled in: the config the run records and builds from."""
        return ctx.config

    def steps_per_epoch(self, ctx: RunContext, data) -> int:
        raise NotImplementedError

    def build(self, ctx: RunContext, data) -> Built:
        """The model, guide, objective and every module with trained parameters, freshly initialised."""
        raise NotImplementedError

    # (ctx, built, data) -> None: what a fresh run does to its modules before training from the
    # data (MFCVAE's GMM-initialised clusters); never called when the modules are then restored.
    initialise = None

    def batches(self, ctx: RunContext, data):
        """A function step -> batch (a dict of model keyword arguments), a pure function of the step."""
        raise NotImplementedError

    def schedule(self, ctx: RunContext, built: Built):
        """None, or a function step -> extra keyword arguments for model and guide."""
        return None

    def on_log(self, ctx: RunContext, built: Built, data):
        """None, or a function step -> extra metrics for the log row."""
        return None

    def evaluate(self, ctx: RunContext, built: Built, data, out_dir: Path, progress: bool, parallel=None) -> dict:
        """Final metrics for summary.json (``out_dir`` holds metrics.csv; other files may go there);
        ``parallel``: the run's processes, where ``shards_evaluation``."""
        raise NotImplementedError

    # (ctx, built, data) -> float: seconds of one point pass of the evaluation (model and guide, one
    # particle, one point) on this machine, timed on a small pilot; None: estimated from the speed of
    # training instead (a step's forward and backward pass over a batch).
    evaluation_pass_seconds = None

    def evaluation_plan(self, ctx: RunContext, built: Built, data) -> EvaluationPlan | None:
        """What ``evaluate`` will compute with these settings and what it costs (None: not estimated)."""
        return None

    def plot(self, ctx: RunContext, built: Built, data, out_dir: Path, summary: dict) -> list[Path]:
        return []

    # --- the gap report (run/gap.py) -------------------------------------------------------------
    # (ctx, data, num_points, split) -> dict: the first ``num_points`` points of a split as model
    # keyword arguments; the gap report applies to the experiments that have it.
    evaluation_points = None
    # (ctx, built, points, settings: inference.GapSettings, progress) -> inference.GapEstimates: the
    # model's own estimator (e.g. by enumerating discrete latents); None: AIS, IWAE and local q*.
    gap_estimates = None
    # (built, points) -> tensor: log p(x) per point in closed form, where the model has one.
    exact_log_px = None
    # (built) -> guide: the run's amortised guide without refinement, where a guide can be refined
    # (inference.RefinedGuide; the real-latent experiments).
    plain_guide = None

    def max_evaluation_points(self, ctx: RunContext, data) -> tuple[int, str] | None:
        """The most points a gap report can take, and why (None: the split's size caps it)."""
        return None

    def model_program(self, built: Built):
        """The program the guide is scored against (the model; plus r(v|z,x) for auxiliary guides)."""
        return built.model.model
