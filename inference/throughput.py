"""What this machine does per second, measured in the calling process: the float32 matrix-multiply
peak (what an estimator's GFLOP/s of network work is compared with, in the gap report and the
benchmarks), and the seconds of one evaluation pass of a model and guide (what the cost estimates
printed before an evaluation or a gap report are made from)."""
import math
import time
from contextlib import contextmanager

import torch


def matmul_peak_gflops(n: int = 1024, repeats: int = 5, device=None) -> float:
    """float32 n x n matmul GFLOP/s on ``device`` (default: the CPU), best of ``repeats``."""
    device = torch.device(device or "cpu")
    wait = torch.cuda.synchronize if device.type == "cuda" else lambda: None  # CUDA kernels run asynchronously
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = math.inf
    for _ in range(repeats):
        wait()
        started = time.perf_counter()
        a @ b
        wait()
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best / 1e9


@contextmanager
def kept_random_state():
    """Every random generator (torch's, each initialised GPU's, numpy's, Python's) as it was
    before the block: a pilot timing must not change the numbers that follow it."""
    from inference.training.checkpoint import rng_state, set_rng_state

    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def seconds_per_point_pass(model, guide, points: dict, max_plate_nesting: int = 1, particles: int = 64,
                           repeats: int = 3) -> float:
    """Seconds of one (particle, point) pass of model and guide as ``evaluate_importance`` runs
    them, timed on ``points``: the best of ``repeats`` timings after a first, untimed pass of the
    same size (validation, warm-up, first allocations: a process that has not trained yet pays
    them there). The random state is restored after: timing an evaluation must not change its
    numbers."""
    from inference.importance import evaluate_importance

    n = next(iter(points.values())).shape[0]
    best = math.inf
    with kept_random_state():
        for attempt in range(repeats + 1):
            started = time.perf_counter()
            evaluate_importance(model, guide, points, particles, max_plate_nesting)
            if attempt:
                best = min(best, time.perf_counter() - started)
    return best / (particles * n)
