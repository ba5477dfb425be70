"""``--device`` of every command (run/svi.py, run/gap.py, run/probe.py, run/gap_atlas.py): the
same choices, the same refusal. Imports only torch, so light commands (the atlas) can use it."""
import re

import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DEVICE_HELP = f"{DEVICE_CHOICES} (auto: a GPU when there is one; a checkpoint written on any device loads on any other)"


class UsageError(Exception):
    """Bad usage found after parsing (exit 2, one line)."""


def cuda_devices() -> int:
    """The CUDA devices usable here (0 without a GPU). Tests patch it to simulate one."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one; a CUDA device asked for where there is none is refused."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):  # torch.device would also take "meta", "mps", ...
        raise UsageError(f"--device {name!r}: choose from {DEVICE_CHOICES}")
    count = cuda_devices()
    if name == "auto":
        return torch.device("cuda" if count else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not count:
        raise UsageError(f"--device {name}: this machine has no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise UsageError(f"--device {name}: there are only {count} CUDA devices")
    return device


def machine_fingerprint(device: torch.device) -> dict:
    """What a run's float path depends on beyond its seed, written into summary.json and gap.json.

    Training is chaotic: the same seed takes a different float path on a CPU whose torch kernels
    use other vector instructions (``cpu_capability``: AVX512 vs AVX2), so a per-seed figure
    reproduces only where these match (CompILE's Gaussian seed 7 ends at 1.000 on AVX512 and at
    0.988 on AVX2: docs/results/compile.md)."""
    fingerprint = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                   "threads": torch.get_num_threads()}
    if device.type == "cuda" and torch.cuda.is_available():  # (a simulated GPU in the tests has no name)
        fingerprint["gpu"] = torch.cuda.get_device_name(device)
    return fingerprint
