#!/usr/bin/env python
"""How good the printed cost estimates are: for each model, the evaluation's estimate (quick and
paper protocols) against the measured evaluation time, and the gap report's plan against its
wall time. A benchmark, not a timed test: it prints estimate / measured for each.

Each model trains a short run on its default data set (``--steps``), is evaluated with
``--eval quick``, then re-evaluated with ``--resume --eval paper`` (no more training); a gap
report runs on the VAE and the linear-Gaussian runs. Models whose data are not in the data
directory are left out, saying so.

    python run/bench_estimates.py [--models vae,linear_gaussian,mfcvae,compile,lfm,cpc] [--steps 200]
                                  [--data-dir DIR] [--out bench_estimates.json]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.training.run_files import write_json  # noqa: E402

UNITS = {"s": 1, "min": 60, "h": 3600}
ESTIMATE = re.compile(r"about ([0-9.]+) (s|min|h)")
EXTRA = {  # what keeps each model's paper protocol within minutes here (the protocols stay as they are)
    "lfm": ["--batch-size", "32"],
    "cpc": ["--width", "64", "--supervised-steps", "100"],
}
GAP = ["--num-points", "20", "--ais-steps", "200", "--ais-chains", "8", "--ais-leapfrog", "5", "--bdmc-points", "10",
       "--convergence-points", "10", "--iwae-k", "500", "--elbo-samples", "200", "--local-steps", "300", "--threads", "1"]


def seconds(text: str) -> float:
    value, unit = ESTIMATE.search(text).groups()
    return float(value) * UNITS[unit]


def run(script: str, *args) -> tuple[str, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "run" / script), *map(str, args), "--no-progress"],
                            capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(map(str, args))} failed: {result.stderr.strip().splitlines()[-1]}")
    return result.stderr, time.perf_counter() - started


def evaluation_estimates(model: str, steps: int, data_dir, work: Path) -> dict:
    out = work / model
    flags = ["--model", model, "--steps", steps, "--out", out, *EXTRA.get(model, []),
             *(["--data-dir", data_dir] if data_dir else [])]
    rows = {}
    for protocol, extra in (("quick", []), ("paper", ["--resume"])):
        err, _ = run("svi.py", *flags, "--eval", protocol, *extra)
        line = next((line for line in err.splitlines() if "evaluation (" in line), None)
        if line is None:  # (CompILE's evaluation is one cheap pass: it prints no estimate)
            return {}
        measured = json.loads((out / "summary.json").read_text())["eval_wall_s"]
        estimate = seconds(line.split(";")[-1].split("(--eval")[0])
        rows[protocol] = {"estimate_s": estimate, "measured_s": measured, "ratio": estimate / max(measured, 1e-9)}
    return rows


def gap_estimate(model: str, work: Path) -> dict:
    err, wall = run("gap.py", "--checkpoint", work / model, "--out", work / f"{model}-gap", *GAP)
    line = next(line for line in err.splitlines() if "plan:" in line)
    estimate = seconds(line)
    return {"estimate_s": estimate, "measured_s": round(wall, 1), "ratio": estimate / wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="run/bench_estimates.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vae,linear_gaussian,mfcvae,compile,lfm,cpc")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--data-dir", default=os.environ.get("PYRO_MODELS_DATA"))
    p.add_argument("--out", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for model in args.models.split(","):
            if model in ("lfm", "cpc") and not args.data_dir:
                print(f"{model}: left out (its data need --data-dir or $PYRO_MODELS_DATA)")
                continue
            results[model] = evaluation_estimates(model, args.steps, args.data_dir, work)
            if model in ("vae", "linear_gaussian"):
                results[model]["gap"] = gap_estimate(model, work)
            for what, row in results[model].items():
                print(f"{model:16} {what:6} estimate {row['estimate_s']:8.1f} s  measured {row['measured_s']:8.1f} s  "
                      f"estimate / measured {row['ratio']:6.2f}", flush=True)
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
