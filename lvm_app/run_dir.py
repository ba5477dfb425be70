"""Run directories: what a new run may write into (``check_destination``), and a run written by
``run/svi.py`` reloaded with its trained parameters (``load_run``, for run/gap.py and run/probe.py)."""
from dataclasses import dataclass
from pathlib import Path

from inference.training.checkpoint import restore_modules
from lvm_app.device import UsageError
from lvm_app.registry import EXPERIMENTS
from lvm_app.saved_run import SavedRun
from pyro_models.datasets import DataDir
from pyro_models.experiment_kit.protocol import Built, Experiment, RunContext

RUN_FILES = ("config.json", "checkpoint.pt", "metrics.csv", "summary.json")


def check_destination(out: Path, resume: bool, overwrite: bool) -> None:
    """Never touch a run without being asked: a directory that holds one needs --resume (continue
    it) or --overwrite (replace it)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not (resume or overwrite):
        raise UsageError(f"{out} holds a run ({', '.join(found)}): continue it with --resume, replace it with "
                         "--overwrite, or choose another --out")


@dataclass
class LoadedRun:
    path: Path
    saved: SavedRun
    ctx: RunContext  # the run's choices, as it trained
    data: object
    built: Built
    step: int
    train_elapsed_s: float | None = None  # training time over all sessions, as the checkpoint saw it

    @property
    def experiment(self) -> Experiment:
        return self.saved.experiment

    @property
    def config(self) -> dict:
        return self.saved.config


def load_run(path, data_dir=None, device=None) -> LoadedRun:
    """``data_dir``: where to read the data (default: the one the run was trained with);
    ``device``: where the modules go (a checkpoint written on any device loads on any other)."""
    saved = SavedRun.read(path, EXPERIMENTS)
    state = saved.checkpoint()
    experiment, run, train = saved.experiment, saved.run, saved.train
    ctx = RunContext(dataset=run["dataset"], config=saved.model_config, settings=saved.settings, guide=run["guide"],
                     local=run["local"], seed=run["seed"], batch_size=train["batch_size"], lr=train["lr"],
                     data_dir=DataDir(data_dir if data_dir is not None else run["data_dir"]))
    data = experiment.load_data(ctx)
    built = experiment.build(ctx, data)  # (the caller's param store is left alone: the modules have names of their own)
    restore_modules(state, built.modules)
    for module in built.modules.values():
        module.to(device or "cpu").eval()
    return LoadedRun(Path(path), saved, ctx, data, built, state["step"], state["extra"].get("elapsed_s"))
