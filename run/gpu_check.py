#!/usr/bin/env python
"""The GPU check, in one command, for a bare machine with one NVIDIA GPU, its own PyTorch and no
network (within 8 minutes on an H100):

1. the tests that skip without CUDA (every test file that says "needs a CUDA device");
2. each model trained briefly on the GPU against the same run (same seed) on the CPU: every number
   of summary.json equal within ``--tolerance`` (relative; float sums run in another order there);
3. the VAE of Cremer et al.: a training step (eager and compiled) and IWAE / AIS throughput as a
   fraction of the GPU's float32 matmul peak measured alongside;
4. the time of Cremer et al.'s AIS protocol (10,000 intermediate distributions x 100 chains x 10
   leapfrog steps on 1,000 points), extrapolated from a short run of it.

Pure-Python packages the machine lacks (pyro-ppl, pyro-api) travel as wheels: here, with network,
``python run/gpu_check.py --download-wheels .whl``; there,
``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:.
python3 run/gpu_check.py --out results/``. Writes gpu_check.json and gpu_check.md into --out.
``--device cpu --tiny`` runs every step small on the CPU (what the test suite checks).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "run")]

WHEELS = ("pyro-ppl==1.9.2", "pyro-api==0.1.2")  # the versions tested here (docs/install.md)
MODELS = {  # a brief run of each model that needs no downloaded data
    "vae": ["--steps", "30", "--iwae-k", "10", "--eval-points", "100", "--train-eval-points", "100"],
    "linear_gaussian": ["--steps", "30", "--iwae-k", "10"],
    "mfcvae": ["--steps", "30", "--iwae-k", "5", "--eval-points", "100", "--gmm-init-points", "300",
               "--batch-size", "64", "--log-eval-points", "100"],
    "lfm": ["--steps", "30"],
    "compile": ["--steps", "30", "--batch-size", "64", "--eval-batch-size", "64", "--test-nll-particles", "1"],
}


def download_wheels(folder: str) -> int:
    return subprocess.call([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", folder,
                            *WHEELS])


def cuda_tests(device: str) -> dict:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                   if "needs a CUDA device" in p.read_text())
    if device != "cuda":
        return {"files": files, "skipped": "no CUDA device: these tests skip here"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "-rs", *files],
                          cwd=ROOT, capture_output=True, text=True)
    tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
    return {"files": files, "exit_status": done.returncode, "seconds": round(time.perf_counter() - started, 1),
            "tail": tail}


def numbers(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and not k.endswith(("_s", "_wall_s")) and "wall" not in k}


def train_on(model: str, device: str, out: Path, tiny: bool) -> dict:
    out = out / f"{model}-{device}-{len(list(out.iterdir()))}"  # (--device cpu: both runs on the CPU)
    argv = [sys.executable, str(ROOT / "run/svi.py"), "--model", model, *MODELS[model], "--device", device,
            "--compile", "off", "--no-progress", "--out", str(out)]
    if tiny:
        argv += ["--steps", "3"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return numbers(json.loads((out / "summary.json").read_text()))


def same_runs(device: str, tolerance: float, tiny: bool, models: list[str]) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for model in models:
            started = time.perf_counter()
            there, here = train_on(model, device, Path(folder), tiny), train_on(model, "cpu", Path(folder), tiny)
            if "error" in there or "error" in here:
                results[model] = {"equal": False, device: there, "cpu": here}
                continue
            far = {k: [here[k], there.get(k)] for k in here
                   if there.get(k) is None or abs(there[k] - here[k]) > tolerance * max(1.0, abs(here[k]))}
            results[model] = {"equal": not far, "differing": far, "seconds": round(time.perf_counter() - started, 1)}
    return results


def vae_throughput(device: str, tiny: bool) -> dict:
    import pyro
    import torch
    from bench import time_steps, vae_and_guide  # run/bench.py: the same VAE and step timing

    from inference import ElboObjective, evaluate_importance
    from inference.ais import AISSettings, ais
    from inference.throughput import matmul_peak_gflops
    from inference.training.loop import make_optimizer
    from pyro_models.compilation import compile_networks, compiler_missing, set_compiled_likelihoods
    from pyro_models.networks import linear_flops

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    peak = matmul_peak_gflops(1024 if tiny else 8192, 3 if tiny else 10, device=dev)
    x_train = torch.bernoulli(torch.full((100, 784), 0.13, device=dev))
    points, k = (20, 50) if tiny else (1000, 1000)
    x_eval = torch.bernoulli(torch.full((points, 784), 0.13, device=dev))
    ais_settings = AISSettings(num_steps=5 if tiny else 50, num_chains=100, leapfrog_steps=10)
    out = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
           "matmul_peak_gflops_per_s": peak, "tf32": torch.backends.cuda.matmul.allow_tf32}
    for compiled in (False, True):
        if compiled and tiny:  # compiling takes tens of seconds on a CPU: the script's check skips it
            break
        if compiled and compiler_missing(dev) is not None:
            out["compiled"] = f"not measured: {compiler_missing(dev)}"
            break
        tag = "compiled" if compiled else "eager"
        vae, guide = (m.to(dev) for m in vae_and_guide())
        if compiled:
            compile_networks(vae, guide)
        set_compiled_likelihoods(compiled)
        objective = ElboObjective(pyro.infer.Trace_ELBO(), vae.model, guide)
        optimizer = make_optimizer([*vae.parameters(), *guide.parameters()], 1e-4)

        def step(x, objective=objective, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            objective({"x": x})
            optimizer.step()

        time_steps(step, [x_train], 20)
        sync()
        out[f"step_ms_{tag}"] = 1e3 * time_steps(step, [x_train], 20 if tiny else 200)
        flops = linear_flops(vae.decoder)
        for _ in range(2):  # the first pays the warm-up (and compilation)
            sync()
            started = time.perf_counter()
            evaluate_importance(vae.model, guide, {"x": x_eval}, k, max_rows=65536)
            sync()
            out[f"iwae_fraction_of_peak_{tag}"] = points * k * flops / (time.perf_counter() - started) / 1e9 / peak
            started = time.perf_counter()
            result = ais(vae.model, {"x": x_eval[:100]}, ais_settings)
            sync()
            seconds = time.perf_counter() - started
        rows = result.row_evals + getattr(result, "pilot_row_evals", 0)
        out[f"ais_fraction_of_peak_{tag}"] = rows * 2 * flops / seconds / 1e9 / peak
        # Cremer et al.: 10,000 steps x 100 chains x 10 leapfrog on 1,000 points; this run: the same chains
        # and leapfrog steps on 100 points for num_steps steps.
        out[f"cremer_ais_hours_{tag}"] = seconds * (10_000 / ais_settings.num_steps) * (1000 / 100) / 3600
        set_compiled_likelihoods(False)
    return out


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['device']}, torch {report['torch']})", "",
             f"Command: `{report['command']}`; {report['seconds']:.0f} s.", "", "## Tests that need CUDA", ""]
    tests = report["cuda_tests"]
    lines += [f"- {f}" for f in tests["files"]]
    lines += ["", f"Result: {tests.get('skipped') or ('passed' if tests['exit_status'] == 0 else 'FAILED')}", ""]
    lines += ["## The same run on the GPU and the CPU", "", f"Tolerance: {report['tolerance']} (relative)", "",
              "| model | equal | differing numbers (CPU, GPU) |", "|---|---|---|"]
    for model, r in report["same_runs"].items():
        lines.append(f"| {model} | {'yes' if r['equal'] else 'NO'} | {r.get('differing') or ''} |")
    lines += ["", "## The VAE of Cremer et al.", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in report["vae"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="run/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tolerance", type=float, default=0.02, help="relative difference allowed between devices")
    p.add_argument("--tiny", action="store_true", help="every step small (a check of this script)")
    p.add_argument("--models", default=",".join(MODELS), help=f"models of step 2 (default: {','.join(MODELS)})")
    p.add_argument("--download-wheels", metavar="FOLDER", help="fetch the pure-Python wheels to carry, then stop")
    args = p.parse_args(argv)
    if args.download_wheels:
        return download_wheels(args.download_wheels)
    import torch

    from inference.training.run_files import write_json, write_text

    if args.device == "cuda" and not torch.cuda.is_available():
        print("run/gpu_check.py: error: no CUDA device here (--device cpu --tiny checks the script)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    report = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "torch": torch.__version__,
              "command": " ".join(["python run/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "tolerance": args.tolerance}
    print("1/3 tests that need CUDA", flush=True)
    report["cuda_tests"] = cuda_tests(args.device)
    print("2/3 each model on the GPU and the CPU", flush=True)
    report["same_runs"] = same_runs(args.device, args.tolerance, args.tiny, args.models.split(","))
    print("3/3 VAE step and estimator throughput", flush=True)
    report["vae"] = vae_throughput(args.device, args.tiny)
    report["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gpu_check.json", report)
    write_text(out / "gpu_check.md", markdown(report))
    print(markdown(report))
    failed = report["cuda_tests"].get("exit_status", 0) or not all(r["equal"] for r in report["same_runs"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
