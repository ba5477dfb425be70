"""A run directory as written by ``run/svi.py``, read once: its config.json (checked, with the
settings added since it was written filled in at the values it trained with) and, when asked for,
its checkpoint. ``--resume``, ``run/gap.py`` and ``run/probe.py`` all start from one."""
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from inference.training.checkpoint import load_checkpoint
from pyro_models.core import check_settings

# Train settings added since runs were first written, at the value those runs trained with
# (shards None: the unsharded loop, whose random stream runs on from step to step).
ADDED_TRAIN_SETTINGS = {"precision": "fp32", "shards": None, "lr_schedule": "constant"}
CHECKPOINT_KEYS = ("step", "modules", "optimizer", "rng", "extra")


class DamagedRun(RuntimeError):
    """A file of a run directory is missing, unreadable, or not what run/svi.py writes (exit 1)."""


def json_value_fits(value, annotation) -> bool:
    """Whether a value read from JSON is of the field's type (JSON has no tuples: lists stand for them)."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if typing.get_origin(option) is tuple:
            item = typing.get_args(option)[0]
            if isinstance(value, list) and all(json_value_fits(v, item) for v in value):
                return True
        elif option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        elif option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        elif option in (str, bool) and type(value) is option:
            return True
    return False


def dataclass_from_json(cls, values: dict, where: str):
    """The dataclass with the saved values (JSON lists back to tuples); unknown keys, values of the
    wrong type and values the dataclass refuses are a one-line ``DamagedRun`` naming ``where``."""
    if not isinstance(values, dict):
        raise DamagedRun(f"{where}: expected an object of settings, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise DamagedRun(f"{where} has settings {sorted(unknown)} that {cls.__name__} does not know")
    wrong = [f"{name} = {value!r}" for name, value in values.items() if not json_value_fits(value, hints[name])]
    if wrong:
        raise DamagedRun(f"{where} holds values of the wrong type: {'; '.join(wrong)}")
    given = {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}
    try:
        settings = cls(**given)
        check_settings(settings)
    except (TypeError, ValueError) as error:
        raise DamagedRun(f"{where}: {error}") from None
    return settings


def as_json(value) -> dict:
    """A settings dataclass as config.json holds it (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(value)))


@dataclass
class SavedRun:
    """``config`` is config.json as written; ``model_config`` and ``settings`` the dataclasses it
    holds, every setting the run did not record at its default (what that version trained with)."""

    path: Path
    config: dict
    experiment: object
    model_config: object
    settings: object
    _checkpoint: dict | None = field(default=None, repr=False)

    @classmethod
    def read(cls, path, experiments: dict) -> "SavedRun":
        """config.json of the run in ``path``; ``experiments``: the registry (name -> Experiment)."""
        path = Path(path)
        file = path / "config.json"
        if not file.exists():
            raise FileNotFoundError(f"{path} is not a run directory: no config.json (train one with run/svi.py "
                                    f"--out {path})")
        try:
            config = json.loads(file.read_text())
            run, train = config["run"], config["train"]
            model_name, _ = run["model"], train["steps"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise DamagedRun(f"{file} is not a run configuration written by run/svi.py ({type(error).__name__}: "
                             f"{error})") from None
        if model_name not in experiments:
            raise DamagedRun(f"{file}: model {model_name!r} is not registered; known: {', '.join(experiments)}")
        experiment = experiments[model_name]
        for section in ("model_config", "settings"):
            if section not in config:
                raise DamagedRun(f"{file} has no {section!r}: it is not a run configuration written by run/svi.py")
        model_config = dataclass_from_json(experiment.config_cls, config["model_config"], f"{file} (model_config)")
        settings = dataclass_from_json(experiment.settings_cls, config["settings"], f"{file} (settings)")
        return cls(path, config, experiment, model_config, settings)

    @property
    def run(self) -> dict:
        return self.config["run"]

    @property
    def train(self) -> dict:
        """The train section, with the settings added since at the values the run trained with."""
        return {**ADDED_TRAIN_SETTINGS, **self.config["train"]}

    def sections(self) -> dict:
        """config.json's settings as this version writes them: the sections a resume compares."""
        train = self.config["train"]  # (settings added since: appended, so config.json keeps its order)
        return {**self.config, "train": {**train, **{k: v for k, v in ADDED_TRAIN_SETTINGS.items() if k not in train}},
                "model_config": as_json(self.model_config), "settings": as_json(self.settings)}

    def checkpoint(self) -> dict:
        """checkpoint.pt, read once (without running code from the file) and checked for its keys."""
        if self._checkpoint is None:
            file = self.path / "checkpoint.pt"
            if not file.exists():
                raise FileNotFoundError(f"{self.path} holds no checkpoint.pt: its run stopped before its first "
                                        "checkpoint")
            state = load_checkpoint(file)
            missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
            if missing:
                raise DamagedRun(f"{file} is not a checkpoint written by run/svi.py (no {', '.join(missing)})")
            self._checkpoint = state
        return self._checkpoint

    def has_checkpoint(self) -> bool:
        return (self.path / "checkpoint.pt").exists()
