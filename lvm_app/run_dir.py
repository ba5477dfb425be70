"""Reload a run directory written by ``run/svi.py`` (config.json + checkpoint.pt) into the
experiment, its data and its built modules with the trained parameters."""
import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path

import pyro

from inference.training.checkpoint import load_checkpoint, restore_modules
from pyro_models.experiment_kit.protocol import Built, Experiment
from lvm_app.registry import EXPERIMENTS
from pyro_models.datasets import DataDir


@dataclass
class LoadedRun:
    path: Path
    config: dict  # config.json as written
    experiment: Experiment
    model_config: object
    settings: object
    data: object
    built: Built
    step: int
    train_elapsed_s: float | None = None  # training time over all sessions, as the checkpoint saw it


def _dataclass_from_json(cls, values: dict):
    """The dataclass with the saved values (JSON lists back to tuples); unknown keys refused."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"config.json has settings {sorted(unknown)} that {cls.__name__} does not know")
    given = {}
    for name, value in values.items():
        if typing.get_origin(hints[name]) is tuple and isinstance(value, list):
            value = tuple(value)
        given[name] = value
    return cls(**given)


def load_run(path, data_dir=None, device=None) -> LoadedRun:
    """``data_dir``: where to read the data (default: the one the run was trained with);
    ``device``: where the modules go (a checkpoint written on any device loads on any other)."""
    path = Path(path)
    for name in ("config.json", "checkpoint.pt"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path} is not a run directory: no {name} (train one with run/svi.py --out {path})")
    try:
        config = json.loads((path / "config.json").read_text())
        run = config["run"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path / 'config.json'} is not a run configuration written by run/svi.py ({error})") from None
    if run["model"] not in EXPERIMENTS:
        raise ValueError(f"{path}: model {run['model']!r} is not registered; known: {', '.join(EXPERIMENTS)}")
    experiment = EXPERIMENTS[run["model"]]
    model_config = _dataclass_from_json(experiment.config_cls, config["model_config"])
    settings = _dataclass_from_json(experiment.settings_cls, config["settings"])
    data = experiment.load_data(run["dataset"], DataDir(data_dir if data_dir is not None else run["data_dir"]))
    pyro.clear_param_store()
    built = experiment.build(model_config, settings, data, run["guide"], run["local"])
    # The data pipeline as the run had it: some experiments remember the run's batch size and seed
    # (CompILE's training points for a gap report, CPC's evaluation batches).
    experiment.batches(data, config["train"]["batch_size"], run["seed"])
    state = load_checkpoint(path / "checkpoint.pt")
    restore_modules(state, built.modules)
    for module in built.modules.values():
        module.to(device or "cpu").eval()
    return LoadedRun(path, config, experiment, model_config, settings, data, built, state["step"],
                     state["extra"].get("elapsed_s"))
