"""Checkpoints: module and optimizer state plus every random number generator, written atomically
(and, through ``ParamStoreEntries``, the Pyro param-store entries that no module owns)."""
import os
import random
from pathlib import Path

import numpy as np
import pyro
import torch


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(path: Path, step: int, modules: dict, optimizer, extra: dict | None = None) -> None:
    """Write to a temporary file and rename, so an interruption never leaves a half-written file."""
    state = {
        "step": step,
        "modules": {name: module.state_dict() for name, module in modules.items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng_state(),
        "extra": extra or {},
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as error:  # a truncated or foreign file
        raise RuntimeError(f"cannot read checkpoint {path}: {error}") from error


def restore_modules(state: dict, modules: dict) -> None:
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])


class ParamStoreEntries(torch.nn.Module):
    """Pyro param-store entries that belong to no module, as a module's extra state, so that the
    runner's checkpoint (module state dicts) carries them and ``--resume`` restores them.

    The case in point: TraceGraph_ELBO's decaying-average baseline keeps its running average in
    the param store under ``"__baseline_avg_downstream_cost_" + site``, outside every module;
    without this a resumed run starts the average again from 0. ``prefixes`` select the entries.
    """

    def __init__(self, prefixes: tuple[str, ...] = ("__baseline_avg_downstream_cost_",)):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def _names(self):
        return [name for name in pyro.get_param_store() if name.startswith(self.prefixes)]

    def get_extra_state(self) -> dict:
        store = pyro.get_param_store()
        return {name: store[name].detach().clone() for name in self._names()}

    def set_extra_state(self, state: dict) -> None:
        store = pyro.get_param_store()
        for name in self._names():
            del store[name]
        for name, value in state.items():
            store[name] = value.detach().clone()
