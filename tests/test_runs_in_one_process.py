"""Experiments keep nothing between calls: two runs of different seeds in one process (as a
notebook, a sweep or a test runs them) give exactly the results of the same runs in processes
of their own. The models whose experiments used to keep run state: CompILE, the LFM and CPC."""
import json
import os

import pytest
from helpers import run_cli

from lvm_app import cli

TIMING_KEYS = {"elapsed_s", "train_wall_s", "eval_wall_s", "eval_wall_s_parts", "train_audio_s_per_s"}
RUNS = {
    "compile": ["--model", "compile", "--steps", "6", "--log-every", "3", "--batch-size", "32",
                "--eval-batch-size", "32", "--test-nll-particles", "2"],
    "lfm": ["--model", "lfm", "--steps", "4", "--log-every", "2", "--batch-size", "8", "--latent-bits", "4",
            "--embedding-dim", "8", "--hidden-dim", "8", "--importance-samples", "2", "--dev-importance-samples", "2",
            "--eval-points", "20", "--dev-points", "20", "--train-eval-points", "20", "--max-word-length", "12"],
    "cpc": ["--model", "cpc", "--steps", "4", "--log-every", "2", "--width", "8", "--context-dim", "8",
            "--prediction-steps", "2", "--window", "1600", "--batch-size", "4", "--eval-batches", "1",
            "--probe-utterances", "12", "--probe-iterations", "3", "--baselines", "mfcc"],
}
NEEDS_DATA_DIR = {"lfm", "cpc"}


def results(out) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    metrics = [{k: v for k, v in zip(header, row.split(",")) if k not in TIMING_KEYS} for row in rows[1:]]
    return {"summary": {k: v for k, v in summary.items() if k not in TIMING_KEYS}, "metrics": metrics}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(RUNS))
def test_two_seeds_in_one_process_equal_two_processes(model, tmp_path, capsys):
    if model in NEEDS_DATA_DIR and not os.environ.get("PYRO_MODELS_DATA"):
        pytest.skip("PYRO_MODELS_DATA is not set (CI sets it to ../shared/data)")
    flags = [*RUNS[model], "--no-progress"]
    for seed in (0, 1):  # one process: this one; the second run is the one the first could reach
        assert cli.main([*flags, "--seed", str(seed), "--out", str(tmp_path / f"in-process-{seed}")]) == 0
    capsys.readouterr()
    alone = run_cli(*flags, "--seed", 1, "--out", tmp_path / "alone-1")
    assert alone.returncode == 0, alone.stderr
    assert results(tmp_path / "in-process-1") == results(tmp_path / "alone-1")
    assert results(tmp_path / "in-process-0") != results(tmp_path / "in-process-1")  # the seeds differ: a real test
