"""The machine's float32 matrix-multiply peak, measured in the calling process: what an estimator's
throughput (GFLOP/s of network work) is compared with, in the gap report and the benchmarks."""
import math
import time

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
