"""Mixed precision for training (``--precision bf16``): network layers in bfloat16, every
log-density, loss and estimator in float32.

Where the boundary lies: while a step runs under ``MixedPrecision``, each network layer
(``nn.Linear``, the convolutions and transposed convolutions, ``nn.RNN``/``GRU``/``LSTM``) runs
its forward pass under ``torch.autocast(device_type, torch.bfloat16)`` (its matmuls in
bfloat16), and what it returns is cast back to float32 as it leaves the layer. Everything between
and after the layers runs as without the context, in float32: activations and normalisations,
flows' log-determinants, the distributions' parameters and every ``log_prob`` Pyro computes, the
ELBO's sums, InfoNCE's scores. Autocast is never entered for a whole step, so a matmul that is
part of a log-density (a model's own ``W @ z``, ``MultivariateNormal.rsample``, InfoNCE's
``p @ z.T``) is never lowered, and the backward pass runs outside autocast (each layer's backward
follows the dtypes of its forward).

Evaluation never runs under the context: only the training objective is wrapped
(``with_precision``), so IWAE, AIS, the gap reports, probes and the metrics logged during
training are computed as in a float32 run. ``fp32`` returns the objective itself: no hook, no
cast, bit for bit the run without this module.
"""
import threading

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

PRECISIONS = ("fp32", "bf16")
LOW_DTYPES = {"bf16": torch.bfloat16}
# The layers whose forward passes run in low precision: the matmuls of the networks.
NETWORK_LAYERS = (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase)


def to_float32(output, dtype: torch.dtype = torch.bfloat16):
    """``output`` (a tensor, or tuples/lists/dicts of them) with every ``dtype`` tensor cast to float32."""
    if torch.is_tensor(output):
        return output.float() if output.dtype == dtype else output
    if isinstance(output, tuple) and hasattr(output, "_fields"):  # a named tuple (e.g. PackedSequence)
        return type(output)(*(to_float32(item, dtype) for item in output))
    if isinstance(output, (tuple, list)):
        return type(output)(to_float32(item, dtype) for item in output)
    if isinstance(output, dict):
        return {key: to_float32(value, dtype) for key, value in output.items()}
    return output


class MixedPrecision:
    """Context: network layers called in this thread run under autocast to ``dtype`` and return
    float32 (see the module's docstring). Re-entrant; hooks are installed only while inside."""

    def __init__(self, device_type: str, dtype: torch.dtype = torch.bfloat16):
        self.device_type = device_type
        self.dtype = dtype
        self.thread = None
        self.handles = []
        self.open = []  # [(layer, its autocast context)] of the layers being run
        self.depth = 0

    def __enter__(self):
        if self.depth == 0:
            self.thread = threading.get_ident()
            self.handles = [register_module_forward_pre_hook(self._before),
                            register_module_forward_hook(self._after, always_call=True)]
        self.depth += 1
        return self

    def __exit__(self, *exc):
        self.depth -= 1
        if self.depth == 0:
            for handle in self.handles:
                handle.remove()
            self.handles = []
            while self.open:  # a layer that raised before its hook ran (always_call makes this rare)
                self.open.pop()[1].__exit__(None, None, None)
        return False

    def _before(self, module, args):
        if isinstance(module, NETWORK_LAYERS) and threading.get_ident() == self.thread:
            context = torch.autocast(device_type=self.device_type, dtype=self.dtype)
            context.__enter__()
            self.open.append((module, context))

    def _after(self, module, args, output):
        if self.open and self.open[-1][0] is module:
            self.open.pop()[1].__exit__(None, None, None)
            return to_float32(output, self.dtype)
        return None


class MixedPrecisionObjective:
    """A training objective whose calls run under ``MixedPrecision``: ``__call__`` (loss and
    backward pass) and ``loss_tensor`` (the loss DistributedDataParallel back-propagates); its
    ``differentiable`` and ``global_batch`` are the wrapped objective's, so the runner treats it
    exactly as the objective it wraps."""

    def __init__(self, objective, context: MixedPrecision):
        self.objective = objective
        self.context = context

    def __call__(self, batch: dict, **schedule) -> float:
        with self.context:
            return self.objective(batch, **schedule)

    def loss_tensor(self, batch: dict, **schedule) -> torch.Tensor:
        with self.context:
            return self.objective.loss_tensor(batch, **schedule)

    @property
    def differentiable(self) -> bool:
        return getattr(self.objective, "differentiable", False)

    @property
    def global_batch(self) -> bool:
        return getattr(self.objective, "global_batch", False)


def autocast_device_type(device) -> str:
    """The autocast device type of ``device`` (a torch.device or its name); ValueError where
    bfloat16 autocast is not available there."""
    device = torch.device(device)
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"--precision bf16: autocast is not available on device type {device.type!r}; use --precision fp32")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--precision bf16: this CUDA device does not support bfloat16; use --precision fp32")
    return device.type


def with_precision(objective, precision: str, device):
    """The training objective for ``--precision``: ``fp32`` gives ``objective`` itself (nothing
    changes); ``bf16`` wraps it so that network layers on ``device`` run in bfloat16 during its
    calls (``MixedPrecisionObjective``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return objective
    return MixedPrecisionObjective(objective, MixedPrecision(autocast_device_type(device), LOW_DTYPES[precision]))
