"""What models, guides and estimators agree on: the per-datapoint plate, the latent sites a
guide must serve, per-site scaling (annealing), instance names for Pyro's param store, and
settings fields that become CLI flags."""
import contextlib
import dataclasses
import itertools
import math
import re
import typing
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import pyro
import torch
from pyro import poutine
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.runtime import _PYRO_STACK
from torch import nn

DATA_PLATE = "data"  # the default name of every model's per-datapoint plate (dim -1)


@dataclass(frozen=True)
class LatentSite:
    """One latent sample site inside the model's per-datapoint plate (dim -1).

    ``dim`` is the size of the site's event (its value has shape ``(..., batch, dim)``);
    ``support`` is ``"real"``, ``"binary"`` or ``"one_hot"`` and decides which guide families apply
    (none of ``guides`` serves ``"one_hot"``: CompILE brings its own guide).
    """

    name: str
    dim: int
    support: str = "real"


def latent_scale(name: str, latent_scales: Mapping[str, float] | None):
    """``poutine.scale`` context for site ``name``: the runner's schedule reaches model and guide
    alike through the ``latent_scales`` argument, so both sides of a KL term are scaled together.

    A weight of exactly 0 masks the site instead (``poutine.scale`` rejects 0): its log-densities
    leave the objective on both sides, which is the limit of the scaled objective, not an
    approximation of it. The sample is still drawn, so downstream sites see a value."""
    scale = 1.0 if latent_scales is None else latent_scales.get(name, 1.0)
    if not isinstance(scale, torch.Tensor) and scale == 0:
        return poutine.mask(mask=False)
    return poutine.scale(scale=scale)


def softplus_inverse(y: float, beta: float = 1.0) -> float:
    """x with softplus_beta(x) = log(1 + exp(beta x)) / beta = y: the raw parameter of a scale y."""
    return math.log(math.expm1(beta * y)) / beta


def setting(default, help: str, choices=None, valid: tuple[str, Callable] | None = None, evaluation: bool = False):
    """A dataclass field with the help text (and choices) its command-line flag shows.

    ``valid``: (what a valid value is, a predicate), applied to the value or to each element of a
    tuple (see ``check_settings``, which also refuses non-finite floats, negative integers and
    empty tuples everywhere). ``evaluation``: the setting only shapes the final evaluation (never
    training or what is logged during it), so a finished run may be re-evaluated with another value."""
    return field(default=default, metadata={"help": help, "choices": choices, "valid": valid, "evaluation": evaluation})


def evaluation_settings(cls) -> set[str]:
    """The names of a settings dataclass's evaluation-only fields (``setting(..., evaluation=True)``)."""
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get("evaluation")}


POSITIVE = ("positive", lambda value: value > 0)
AT_LEAST_ONE = ("at least 1", lambda value: value >= 1)
PROBABILITY = ("a probability strictly between 0 and 1", lambda value: 0 < value < 1)
FRACTION = ("in [0, 1)", lambda value: 0 <= value < 1)
NON_NEGATIVE = ("zero or more", lambda value: value >= 0)


def check_settings(settings) -> None:
    """Refuse a bad value in a settings dataclass, naming its flag (ValueError): a NaN or infinite
    float, a negative integer, an empty tuple (tuples of integers are sizes: each at least 1), or
    a value its field's ``valid`` predicate rejects; then the dataclass's own ``check()``."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        if f.metadata.get("derived"):
            continue
        value, flag = getattr(settings, f.name), "--" + f.name.replace("_", "-")
        if value is None:  # an optional setting left at its default ("the data set's", ...)
            continue
        values = value if isinstance(value, tuple) else (value,)
        rule = f.metadata.get("valid")
        if typing.get_origin(hints[f.name]) is tuple:
            if not value:
                raise ValueError(f"{flag} needs at least one value")
            rule = rule or AT_LEAST_ONE
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{flag} must be finite, got {item}")
            if isinstance(item, int) and not isinstance(item, bool) and item < 0 and rule is None:
                raise ValueError(f"{flag} must not be negative, got {item}")
            if rule is not None and not rule[1](item):
                raise ValueError(f"{flag} must be {rule[0]}, got {value if len(values) == 1 else ','.join(map(str, values))}")
    check = getattr(settings, "check", None)
    if check is not None:
        check()


def derived(default):
    """A field the experiment sets from the data (e.g. data_dim); it is not a command-line flag."""
    return field(default=default, metadata={"derived": True})


_instances: Counter = Counter()
_live: "weakref.WeakValueDictionary[str, nn.Module]" = weakref.WeakValueDictionary()  # name -> the module holding it


def unique_name(base: str) -> str:
    """``base`` for the first instance in this process, then ``base_1``, ``base_2``, ...: the
    name under which an instance registers its networks with ``pyro.module``, so that two
    models (or guides) in one program have their own parameters in Pyro's param store. A name is
    never handed out twice in a process, nor one a live module holds."""
    while True:
        count = _instances[base]
        _instances[base] += 1
        name = base if count == 0 else f"{base}_{count}"
        if name not in _live:
            return name


_registered: set | None = None  # inside registered_once(): the modules registered so far


@contextlib.contextmanager
def registered_once():
    """Within the block each ``NamedModule`` registers its parameters with Pyro's param store on
    its first call only. For a loop whose optimiser moves the modules' own tensors (the runner's
    ``train``: torch's Adam over ``module.parameters()``), where re-registering every step is
    pure cost: 24 ``pyro.param`` messages, about 0.5 ms of a 7 ms VAE step on one CPU thread.
    Not for a loop that finds its parameters in the trace (Pyro's ``SVI``): after the first step
    its trace would hold none."""
    global _registered
    outer = _registered
    _registered = set() if outer is None else outer
    try:
        yield
    finally:
        _registered = outer


class NamedModule(nn.Module):
    """A module whose networks live in Pyro's param store under a name of its own (``name``).

    Two live modules under one name would share the store's entries, and the second would never
    train (its own tensors are not the ones an optimiser of the store moves): so a name given
    (``name=``) that another live module holds is refused, and a copy (``copy.deepcopy``, a
    pickled module loaded again) takes a fresh name. A module re-created under the name of one
    that is gone takes the store's values for it: ``pyro.get_param_store().load(...)`` (or
    ``set_state``), then ``VAE(config, name="vae")``, restores a saved model the Pyro way."""

    def _claim_name(self, name: str | None, base: str) -> None:
        if name is None:
            name = unique_name(base)
        else:
            holder = _live.get(name)
            if holder is not None and holder is not self:
                raise ValueError(f"another live module already registers its parameters under the name {name!r} in "
                                 "Pyro's param store: two modules under one name share the store's entries and the "
                                 "second never trains; give this one another name= (a copy gets its own)")
        _live[name] = self
        self.name = name

    def register_with_pyro(self) -> None:
        """``pyro.module`` under the module's name: its tensors become the store's entries, or, where
        the store already holds values under that name (loaded from a file), the store's values
        become its tensors. Inside ``registered_once()``, only on the module's first call."""
        if _registered is not None:
            if id(self) in _registered:
                return
            _registered.add(id(self))
        pyro.module(self.name, self, update_module_params=True)

    def __getstate__(self):
        for p in self.parameters():  # Pyro's link to the store (a weakref: it cannot be pickled); remade on use
            p.__dict__.pop("unconstrained", None)
        return dict(self.__dict__)

    def __setstate__(self, state):
        super().__setstate__(state)
        self._claim_name(None, re.sub(r"_\d+$", "", self.name))  # a copy: its own name, its own parameters


def refuse_enumeration(why: str) -> None:
    """Raise when the model runs under Pyro's enumeration (``TraceEnum_ELBO``, ``infer_discrete``)
    that it cannot serve, saying ``why``: the alternative is a Monte Carlo ELBO that looks
    enumerated, or a shape error deep inside the model."""
    if any(isinstance(handler, EnumMessenger) for handler in _PYRO_STACK):  # Pyro exposes no public test
        raise NotImplementedError(f"{why}; train it with Trace_ELBO or TraceGraph_ELBO instead of TraceEnum_ELBO")

def device_of(module: nn.Module) -> torch.device:
    """Where a module's parameters (else buffers) are, so where its inputs must go (the CPU when it has none)."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def batch_size_of(data: torch.Tensor | None, idx: torch.Tensor | None = None, batch_size: int | None = None) -> int:
    """How many points a model call is about: the data's first dimension, else the number of
    indices, else ``batch_size`` (generating from the prior)."""
    if data is not None:
        return data.shape[0]
    if idx is not None:
        return len(idx)
    if batch_size is None:
        raise ValueError("without data, say how many points to generate: batch_size=N (or idx=...)")
    return batch_size


def data_plate(name: str, batch: int, idx: torch.Tensor | None = None, num_data: int | None = None):
    """The per-datapoint plate (dim -1). Plain ``pyro.plate(name, batch)`` by default; with
    ``num_data`` (the size of the whole data set) it is Pyro's subsampling plate
    ``pyro.plate(name, num_data, subsample=idx)``: ``idx`` are this batch's indices into the
    data set, and every log-density in the plate is scaled by num_data / batch."""
    if num_data is None:
        return pyro.plate(name, batch, dim=-1)
    if idx is None and batch != num_data:
        raise ValueError(f"num_data={num_data} with a batch of {batch} points needs idx=, the batch's indices "
                         "into the data set")
    return pyro.plate(name, num_data, subsample=idx, dim=-1)


@runtime_checkable
class LatentVariableModel(Protocol):
    """What every generative model of this library provides; guides, estimators and the runner
    rely on nothing else (tests/test_model_contract.py holds every model to it).

    - ``model(...)``: the Pyro program. Data as keyword (or leading positional) arguments whose
      first dimension indexes points; ``None`` data is sampled from the prior (give
      ``batch_size=N``). ``idx`` (the points' indices) and ``num_data`` (the data set's size)
      make the per-datapoint plate Pyro's subsampling plate; ``latent_scales`` (site -> weight)
      scales each latent site's log-densities (annealing).
    - ``latent_sites``: the latent sample sites a guide must serve, each inside the plate
      ``plate_name`` at dim -1, with an event shape (``LatentSite``).
    - ``max_plate_nesting``: how many plates the program nests (estimators put their particle
      dimension to the left of them).
    - ``name``: the prefix of the networks' parameters in Pyro's param store (unique per
      instance by default); ``plate_name``: the per-datapoint plate's name (default "data").
    """

    name: str
    plate_name: str
    max_plate_nesting: int

    @property
    def latent_sites(self) -> tuple[LatentSite, ...]: ...

    def model(self, *args, **kwargs): ...


@runtime_checkable
class AmortisableModel(LatentVariableModel, Protocol):
    """A model whose sites the library's guide families serve, with an encoder body for them:
    ``make_encoder()`` gives a fresh ``(module, output size)`` that takes the data as ``model``
    does (every model but CompILE, whose structured guide is its own)."""

    def make_encoder(self) -> tuple[nn.Module, int]: ...
