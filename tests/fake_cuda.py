"""A CUDA device simulated on the CPU, to catch device bugs on a machine without a GPU.

Inside ``with FakeCuda() as fake:`` (a ``TorchFunctionMode``: it sees every torch call made from
Python) every tensor lives on the CPU, but the ones "on the GPU" are remembered (by identity,
weakly) and say so: ``t.device`` is ``cuda:0``, ``t.is_cuda`` is true. A tensor goes to the GPU
the ways it does on a real one: ``.to("cuda")``, ``.cuda()``, ``module.to(device)``, a factory
called with ``device=`` a CUDA device (or one read from a GPU tensor, ``device=x.device``); the
results of an op are on the GPU when one of its tensor arguments is; ``.cpu()`` / ``.to("cpu")``
bring a copy back. ``torch.Generator(device="cuda")`` makes a "CUDA" generator, and
``lvm_app.device`` sees one CUDA device, so ``--device cuda`` is accepted.

What CUDA refuses is refused (``DeviceMixError``, naming the op, the shapes and the innermost
lines of this project that called it; also kept in ``fake.errors``, in case a caller swallows
the exception):

- an op that mixes a GPU tensor with a CPU tensor of one or more dimensions (0-dim CPU tensors
  are scalars, which CUDA accepts), e.g. ``gpu + torch.arange(3)``, ``F.cross_entropy(gpu_logits,
  cpu_labels)``, ``torch.stack([gpu, cpu])``; ``cpu[gpu_indices]`` (``gpu[cpu_indices]`` is legal);
  ``x[index_tensor] = value`` with indices or value on the other device;
- ``.numpy()`` / ``np.asarray`` of a GPU tensor (what matplotlib and scikit-learn do with one);
- sampling on the GPU with a CPU ``torch.Generator`` (or on the CPU with a CUDA one);
- GPU ``lengths`` for ``pack_padded_sequence`` (they must be on the CPU).

What it misses: what C++ does inside one torch call (a call's results take its arguments'
device, as on CUDA); tensors made before the block (they count as CPU tensors: build and move
the modules inside it); ``torch.tensor(...)`` of GPU scalars (taken as CPU, no check); slice
assignment and ``copy_`` (legal across devices, never refused); one GPU against another (all are
cuda:0); code that does not run in the test; subprocesses; anything about speed (a silent copy
per step passes); kernels or dtypes one device has and the other lacks.
"""
import traceback
import typing
import weakref
from pathlib import Path
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode

CUDA = torch.device("cuda", 0)
ROOT = Path(__file__).resolve().parents[1]
PROJECT = tuple(str(ROOT / name) for name in ("pyro_models", "guides", "inference", "lvm_app", "run"))


class DeviceMixError(AssertionError):
    """Not a RuntimeError: the command line turns those into exit 1 and a message; this one must reach the test."""


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.split(":")[0] == "cuda"
    return False


def _tensors(args, kwargs):
    """The tensors among the arguments, one level into lists and tuples (torch.cat, torch.stack)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, torch.Tensor))


def _outputs(result):
    if isinstance(result, torch.Tensor):
        yield result
    elif isinstance(result, (list, tuple)):  # also namedtuples: torch.return_types, PackedSequence
        for value in result:
            yield from _outputs(value)


def _call_site() -> str:
    """The innermost frames of this project's code (not torch's, Pyro's or this file's), innermost first."""
    frames = [f"{Path(frame.filename).relative_to(ROOT)}:{frame.lineno} ({frame.line})"
              for frame in reversed(traceback.extract_stack()[:-2]) if frame.filename.startswith(PROJECT)]
    return " <- ".join(frames[:3]) or "outside the project"


def _describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"


# Reads that work on a GPU tensor (CUDA copies to the host): no check, and no tensor comes out.
_HOST_READS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "__len__", "__repr__",
               "__format__", "__str__"}
# Ops legal across devices: they read only the other tensor's shape, or copy it.
_NO_MIX_CHECK = {"expand_as", "view_as", "reshape_as", "new_tensor", "size", "dim", "numel", "is_same_size",
                 "_has_compatible_shallow_copy_type"}


class _IdentitySet:
    """A set of objects by identity that does not keep them alive (weakref.WeakSet compares
    tensors with ==, which is elementwise)."""

    def __init__(self):
        self._refs = {}

    def add(self, obj):
        key = id(obj)
        def forget(ref):  # the object died (a new one may already reuse its id)
            if self._refs.get(key) is ref:
                del self._refs[key]

        self._refs[key] = weakref.ref(obj, forget)

    def discard(self, obj):
        if obj in self:
            del self._refs[id(obj)]

    def __contains__(self, obj) -> bool:
        ref = self._refs.get(id(obj))
        return ref is not None and ref() is obj


class FakeCuda(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.gpu = _IdentitySet()  # tensors on the simulated GPU
        self.cpu_by_design = _IdentitySet()  # PackedSequence.batch_sizes: on the CPU on a GPU too
        self.gpu_generators = _IdentitySet()
        self.errors: list[str] = []
        self._patches = []

    # --- entering: patches for what the mode cannot see, and for what would reach the real (absent) GPU ------
    def __enter__(self):
        mode = self

        class Generator(torch.Generator):
            def __new__(cls, device="cpu"):
                generator = super().__new__(cls, "cpu")
                if _is_cuda(device):
                    mode.gpu_generators.add(generator)
                return generator

        make_subclass = torch.Tensor._make_subclass

        # nn.Parameter(x) is not a torch function (the signature is torch's: torch._dynamo checks it)
        def _make_subclass(cls: type[typing.Any], data: torch.Tensor, requires_grad: bool = False,
                           **kwargs: typing.Any) -> typing.Any:
            result = make_subclass(cls, data, requires_grad, **kwargs)
            return mode._mark(result, data in mode.gpu)

        as_subclass = torch.Tensor.as_subclass

        def _as_subclass(self, cls):  # Pyro's ProvenanceTensor: not a torch function either
            return mode._mark(as_subclass(self, cls), self in mode.gpu)

        self._patches = [mock.patch.object(torch.Tensor, "_make_subclass", staticmethod(_make_subclass)),
                         mock.patch.object(torch.Tensor, "as_subclass", _as_subclass),
                         mock.patch("lvm_app.device.cuda_devices", lambda: 1),  # --device cuda is accepted
                         mock.patch("torch.backends.cudnn.is_acceptable", lambda tensor: False),  # RNNs ask it
                         mock.patch("torch.cuda.synchronize", lambda device=None: None),  # timings ask it
                         mock.patch("torch.Generator", Generator)]
        for patch in self._patches:
            patch.start()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for patch in reversed(self._patches):
                patch.stop()

    def assert_clean(self):
        assert not self.errors, "device bugs:\n" + "\n".join(self.errors)

    def on_gpu(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t in self.gpu

    def _fail(self, message: str):
        message = f"{message} at {_call_site()}"
        self.errors.append(message)
        raise DeviceMixError(message)

    def _mark(self, result, gpu: bool):
        for t in _outputs(result):
            if gpu:
                self.gpu.add(t)
            else:
                self.gpu.discard(t)
        return result

    # --- every torch call ----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("__get__", "__set__"):  # a tensor attribute: .device, .is_cuda, .data = x, .grad, ...
            return self._attribute(func, name, args)
        if name in ("to", "cuda", "cpu"):
            return self._move(func, name, args, kwargs)
        tensors = list(_tensors(args, kwargs))
        gpu = [t for t in tensors if t in self.gpu]
        generator = kwargs.get("generator")
        if kwargs.get("device") is not None:  # a factory, or torch.tensor(data, device=...): made where asked
            target = _is_cuda(kwargs["device"])
            self._check_generator(name, generator, target)
            return self._mark(func(*args, **{**kwargs, "device": "cpu"}), target)
        if name in ("numpy", "__array__") and gpu:
            self._fail(f"{name}() of a GPU tensor {_describe(gpu[0])} (call .cpu() first)")
        if name in _HOST_READS:
            return func(*args, **kwargs)
        if name in ("tensor", "as_tensor") and not (name == "as_tensor" and isinstance(args[0], torch.Tensor)):
            return func(*args, **kwargs)  # a new CPU tensor from Python values (also from GPU scalars)
        if name == "_pack_padded_sequence":
            if self.on_gpu(args[1]):
                self._fail("pack_padded_sequence with GPU lengths (they must be a CPU tensor)")
            result = func(*args, **kwargs)
            self.cpu_by_design.add(result[1])
            self._mark(result[0], bool(gpu))
            return result
        if name == "_pad_packed_sequence":  # (padded, lengths): the lengths stay on the CPU
            result = func(*args, **kwargs)
            self._mark(result[0], bool(gpu))
            return result
        if name == "__getitem__":  # GPU tensor[CPU indices] is legal; CPU tensor[GPU indices] is not
            if gpu and args[0] not in self.gpu:
                self._fail(f"indexing a CPU tensor {_describe(args[0])} with GPU indices")
            return self._mark(func(*args, **kwargs), args[0] in self.gpu)
        if name == "__setitem__":  # x[slices] = y copies across devices; x[tensor index] = y does not
            target, index, value = args[0] in self.gpu, args[1], args[2]
            indices = [i for i in (index if isinstance(index, tuple) else (index,)) if isinstance(i, torch.Tensor)]
            if any(self.on_gpu(i) and not target for i in indices) or (
                    indices and isinstance(value, torch.Tensor) and value.dim() > 0 and (value in self.gpu) != target):
                self._fail(f"x[tensor index] = value into a {'GPU' if target else 'CPU'} tensor {_describe(args[0])}: "
                           "its indices or value are on the other device")
            return func(*args, **kwargs)
        if name == "copy_":
            return func(*args, **kwargs)  # in place: the destination keeps its device
        if gpu and name not in _NO_MIX_CHECK:
            cpu = [t for t in tensors if t not in self.gpu and t.dim() > 0 and t not in self.cpu_by_design]
            if cpu:
                self._fail(f"torch {name}: a GPU tensor {_describe(gpu[0])} meets a CPU tensor {_describe(cpu[0])}")
        self._check_generator(name, generator, bool(gpu))
        on_gpu = bool(gpu) if name != "new_tensor" else args[0] in self.gpu
        return self._mark(func(*args, **kwargs), on_gpu)

    def _check_generator(self, name, generator, on_gpu: bool):
        if generator is not None and (generator in self.gpu_generators) != on_gpu:
            where = "GPU" if on_gpu else "CPU"
            self._fail(f"torch {name}: sampling on the {where} with a "
                       f"{'CUDA' if generator in self.gpu_generators else 'CPU'} torch.Generator")

    def _attribute(self, func, name, args):
        attribute = func.__self__.__name__
        tensor = args[0]
        if name == "__set__":  # param.data = x (module.to): the tensor takes x's device
            if attribute == "data":
                self._mark(tensor, args[1] in self.gpu)
            return func(*args)
        if attribute == "device":
            return CUDA if tensor in self.gpu else func(*args)
        if attribute == "is_cuda":
            return tensor in self.gpu
        if attribute == "is_cpu":
            return tensor not in self.gpu
        return self._mark(func(*args), tensor in self.gpu)  # .data, .grad, .T, .mT, .real, ...

    def _move(self, func, name, args, kwargs):
        """``.to(...)``, ``.cuda()``, ``.cpu()``: run on the CPU; a copy whenever the device changes."""
        tensor, rest = args[0], args[1:]
        if name == "cuda":
            target = True
        elif name == "cpu":
            target = False
        else:
            target = None  # .to(dtype) keeps the device
            for value in (*rest, kwargs.get("device")):
                if isinstance(value, torch.Tensor):
                    target = value in self.gpu
                elif isinstance(value, (torch.device, str)) and not isinstance(value, torch.dtype):
                    target = _is_cuda(value)
        if target is None:
            return self._mark(func(*args, **kwargs), tensor in self.gpu)
        if name == "to":
            rest = tuple("cpu" if isinstance(v, (torch.device, str)) else v.cpu() if isinstance(v, torch.Tensor) else v
                         for v in rest)
            kwargs = {k: ("cpu" if k == "device" else v) for k, v in kwargs.items()}
            result = torch.Tensor.to(tensor, *rest, **kwargs)
        else:
            result = tensor
        if target != (tensor in self.gpu) and result is tensor:
            result = tensor.clone()  # a move makes a new tensor; the original stays where it was
        return self._mark(result, target)
