#!/usr/bin/env python
"""Each model's training step, eager against compiled (``--compile on``), in one process: the
runner prepares the model twice (the same seed, data and settings), one copy is compiled, and
blocks of steps alternate between them (the machine is shared and noisy); medians are compared.
The compile time is paid before timing and reported.

    python run/bench_compiled_steps.py [--models vae,mfcvae,lfm,compile,cpc] [--threads 1] [--block 10]

CPC reads the spoken-digit recordings from the data directory ($PYRO_MODELS_DATA).
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from inference.training.loop import make_optimizer, parameters_of  # noqa: E402
from inference.training.run_files import write_json  # noqa: E402
from lvm_app.cli import parse  # noqa: E402
from lvm_app.training_run import prepare  # noqa: E402
from pyro_models.compilation import compile_networks, set_compiled_likelihoods  # noqa: E402
from pyro_models.core import registered_once  # noqa: E402

EXTRA = {"mfcvae": ["--gmm-init-points", "500"], "cpc": ["--baselines", ""]}


def stepper(model: str, out: str, compiled: bool):
    """(step(i), compile seconds) for a freshly prepared run of ``model``."""
    _, experiment, args = parse(["--model", model, "--compile", "off", "--out", out, *EXTRA.get(model, [])])
    p = prepare(experiment, args, None, None, torch.device("cpu"))
    started = time.perf_counter()
    names = compile_networks(*p.built.modules.values()) if compiled else []
    compile_s = time.perf_counter() - started
    batches, schedule = experiment.batches(p.ctx, p.data), experiment.schedule(p.ctx, p.built)
    optimizer = make_optimizer(parameters_of(p.built.modules), p.train["lr"])

    def step(i: int):
        set_compiled_likelihoods(compiled)  # process-wide: each copy sets its own
        optimizer.zero_grad(set_to_none=True)
        p.built.objective(batches(i), **(schedule(i) if schedule else {}))
        optimizer.step()

    return step, compile_s, names, p.train["batch_size"]


def bench(model: str, block: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as folder, registered_once():
        eager, _, _, batch_size = stepper(model, f"{folder}/eager", False)
        compiled, compile_s, names, _ = stepper(model, f"{folder}/compiled", True)
        started = time.perf_counter()
        for i in range(3):  # warm up; the compiled copy compiles here
            eager(i)
            compiled(i)
        warm_up_s = time.perf_counter() - started
        times = {"eager": [], "compiled": []}
        for r in range(rounds):
            for name, step in (("eager", eager), ("compiled", compiled)):
                began = time.perf_counter()
                for i in range(3 + r * block, 3 + (r + 1) * block):
                    step(i)
                times[name].append((time.perf_counter() - began) / block)
    set_compiled_likelihoods(False)
    eager_ms, compiled_ms = (1e3 * statistics.median(times[k]) for k in ("eager", "compiled"))
    return {"model": model, "batch_size": batch_size, "compiled_networks": names, "eager_step_ms": eager_ms,
            "compiled_step_ms": compiled_ms, "speed_up": eager_ms / compiled_ms,
            "compile_and_warm_up_s": compile_s + warm_up_s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="run/bench_compiled_steps.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vae,mfcvae,lfm,compile,cpc")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--block", type=int, default=10, help="steps per block")
    p.add_argument("--rounds", type=int, default=5, help="alternating blocks per variant")
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for model in args.models.split(","):
        r = bench(model, args.block, args.rounds)
        results.append(r)
        print(f"{model} (batch {r['batch_size']}, {args.threads} thread(s)): eager {r['eager_step_ms']:.1f} ms, "
              f"compiled {r['compiled_step_ms']:.1f} ms per step: x{r['speed_up']:.2f} "
              f"({len(r['compiled_networks'])} networks compiled; compiling and warm-up "
              f"{r['compile_and_warm_up_s']:.0f} s)", flush=True)
    if args.out:
        write_json(Path(args.out), results)  # atomically, never through a link
    return 0


if __name__ == "__main__":
    sys.exit(main())
