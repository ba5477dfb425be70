"""Checkpoints: module and optimizer state plus every random number generator, written atomically
(and, through ``ParamStoreEntries``, the Pyro param-store entries that no module owns).

A checkpoint holds only tensors and plain containers (the random states too), and is read with
``torch.load(weights_only=True)``: loading a checkpoint never runs code from it, whoever wrote the
file. A checkpoint with a non-finite tensor is never written: the last good one stays."""
import random
from pathlib import Path

import numpy as np
import pyro
import torch

from .run_files import save_torch


def rng_state() -> dict:
    """Every generator's state as tensors and plain values (what ``weights_only`` loads)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, words, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
            # each GPU's generator (reparameterisation noise drawn on the device): resumes exact there too
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda", [])  # none: written on a CPU (or before this was saved)
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["words"].tolist()), python["gauss"]))


class NonFiniteCheckpoint(RuntimeError):
    """A tensor to be checkpointed is NaN or infinite; nothing was written."""


def _non_finite(value, where: str = "") -> str | None:
    """The path of the first floating-point tensor in ``value`` with a NaN or an infinity."""
    if torch.is_tensor(value):
        return where if value.is_floating_point() and not torch.isfinite(value).all() else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}/{key}")
        if found is not None:
            return found
    return None


def checkpoint_state(step: int, modules: dict, optimizer, extra: dict | None = None) -> dict:
    """What a checkpoint holds; ``NonFiniteCheckpoint`` where a parameter or optimizer state is not finite."""
    state = {
        "step": step,
        "modules": {name: module.state_dict() for name, module in modules.items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng_state(),
        "extra": extra or {},
    }
    parameters = {name: dict(module.named_parameters()) for name, module in modules.items()}  # not buffers:
    bad = _non_finite({"modules": parameters, "optimizer": state["optimizer"]})  # a buffer may hold inf
    if bad is not None:
        raise NonFiniteCheckpoint(f"{bad} is not finite at step {step}: checkpoint not written")
    return state


def save_checkpoint(path: Path, step: int, modules: dict, optimizer, extra: dict | None = None) -> None:
    """Write through a temporary file and a rename (``run_files``), so an interruption never leaves
    a half-written file and a link at ``path`` is replaced, not followed."""
    save_torch(path, checkpoint_state(step, modules, optimizer, extra))


def load_checkpoint(path: Path) -> dict:
    """The checkpoint's contents, read without running any code from the file (``weights_only``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # a truncated or foreign file, or one that would run code
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RuntimeError(f"cannot read checkpoint {path} as tensors and plain values (it is truncated, from "
                           f"another program, or would run code when loaded): {first}") from error


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
