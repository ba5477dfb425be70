"""Compiled networks and likelihoods: ``torch.compile`` applied to a model's and a guide's
straight-line networks (every outermost ``nn.Sequential``) and to the library's likelihoods, with
a fall-back to eager code, announced in one line, when compilation fails (no C++ compiler, an
operation the compiler does not take).

Compilation is opt-in and process-wide for the likelihoods (``compile_networks`` turns it on):
the runner decides when a run is long enough to repay the compile time (``--compile``). The
compiled and eager programs are the same Pyro programs; their log-densities agree to float
tolerance (tests/test_compiled_paths.py checks every model).

    from pyro_models.compilation import compile_networks
    compile_networks(model, guide)   # in place; parameters and state_dict keys are unchanged

Shapes: each network compiles for its first input shape and, at the second, once more for any
shape (torch.compile's automatic dynamic shapes), so an evaluator's varying chunks cost two
compilations, not one per chunk. A failure is caught where the compiled forward is called (the
backward pass is compiled with it); one in a compiled backward pass would surface as the step's
error.
"""
import shutil
import sys
from collections.abc import Callable

import torch
from torch import nn
from torch._dynamo.exc import TorchDynamoException
from torch._functorch import config as functorch_config

_likelihoods = {"compiled": False, "backend": "inductor"}


class CompileFailed(RuntimeError):
    """torch.compile cannot run here; the message says why and what to do."""


def compiler_missing(device: torch.device | str = "cpu") -> str | None:
    """Why compiled code cannot run on ``device`` (None when it can): inductor needs a C++
    compiler for the CPU and Triton for CUDA."""
    if torch.device(device).type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed (pip install triton), which torch.compile needs on CUDA"
        return None
    if not any(shutil.which(name) for name in ("c++", "g++", "clang++")):
        return "no C++ compiler on PATH (install g++ or clang++), which torch.compile needs on the CPU"
    return None


class _CompiledOrEager:
    """Calls the compiled function; when the compiler fails (an error of torch.compile's own, not
    one the code raises when run), runs the same call eagerly: if that succeeds, says so in one
    line and stays eager; if it raises too, the error was the code's, and that is what is raised."""

    def __init__(self, eager: Callable, name: str, backend: str):
        self.eager, self.name = eager, name
        self.compiled = torch.compile(eager, backend=backend)
        self.failed = False

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except TorchDynamoException as error:
            result = self.eager(*args, **kwargs)  # raises the code's own error, if it was one
            self.failed = True
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            print(f"compilation of {self.name} failed ({type(error).__name__}: {first_line}); it runs eagerly",
                  file=sys.stderr)
            return result


def outermost_sequentials(*roots: nn.Module) -> list[tuple[str, nn.Sequential]]:
    """Every ``nn.Sequential`` under ``roots`` that no other one contains, with its name."""
    found, seen = [], set()

    def visit(prefix: str, module: nn.Module):
        if id(module) in seen:
            return
        seen.add(id(module))
        if isinstance(module, nn.Sequential):
            found.append((prefix, module))
            return
        for name, child in module.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    for root in roots:
        if isinstance(root, nn.Module):
            visit(type(root).__name__, root)
    return found


def compile_networks(*roots: nn.Module, backend: str = "inductor") -> list[str]:
    """Compile, in place, every outermost ``nn.Sequential`` of ``roots`` (models, guides) and the
    library's likelihoods; returns the compiled networks' names. Idempotent. Raises
    ``CompileFailed`` when no compiler can run here (see ``compiler_missing``)."""
    if backend == "inductor":
        device = next((p.device for root in roots if isinstance(root, nn.Module) for p in root.parameters()), "cpu")
        reason = compiler_missing(device)
        if reason is not None:
            raise CompileFailed(reason)
    # AIS and HMC differentiate a compiled network twice per graph (retain_graph=True), which
    # inductor's donated backward buffers refuse; keeping them costs one copy per backward.
    functorch_config.donated_buffer = False
    names = []
    for name, module in outermost_sequentials(*roots):
        if not isinstance(module.__dict__.get("forward"), _CompiledOrEager):
            # An instance attribute shadows the class's forward: state_dict keys and parameters stay as they were.
            module.forward = _CompiledOrEager(module.forward, name, backend)
        names.append(name)
    set_compiled_likelihoods(True, backend)
    return names


def set_compiled_likelihoods(on: bool, backend: str = "inductor") -> None:
    """Turn the compiled likelihoods on or off (networks compiled in place stay compiled: rebuild
    them to undo that)."""
    _likelihoods.update(compiled=on, backend=backend)


def likelihoods_compiled() -> bool:
    return _likelihoods["compiled"]


def likelihood_function(eager: Callable) -> Callable:
    """``eager`` while likelihoods are eager; its compiled form (made on first use) once
    ``compile_networks`` has run."""
    compiled = {}

    def dispatch(*args):
        if not _likelihoods["compiled"]:
            return eager(*args)
        backend = _likelihoods["backend"]
        if backend not in compiled:
            compiled[backend] = _CompiledOrEager(eager, eager.__name__, backend)
        return compiled[backend](*args)

    return dispatch
