"""run/gap.py end to end (in subprocesses), and the flow guides through run/svi.py."""
import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT
from helpers import run_cli

FAST_GAP = ["--num-points", "30", "--ais-steps", "30", "--ais-chains", "4", "--ais-leapfrog", "3",
            "--bdmc-points", "10", "--iwae-k", "50", "--elbo-samples", "50", "--local-steps", "100",
            "--threads", "1", "--no-progress"]
KEYS = ["log_px", "iwae", "elbo_local", "elbo_amortised", "approximation_gap", "amortisation_gap",
        "settings", "wall_s", "log_px_method", "checks", "converged", "bdmc_simulated", "ais_convergence"]


def run_gap(*args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "run" / "gap.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def linear_gaussian_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lg")
    result = run_cli("--model", "linear_gaussian", "--steps", "100", "--out", out, "--no-progress", "--iwae-k", "5")
    assert result.returncode == 0, result.stderr
    return out


def test_gap_report_on_the_linear_gaussian_model(linear_gaussian_run, tmp_path):
    result = run_gap("--checkpoint", linear_gaussian_run, "--out", tmp_path, *FAST_GAP, "--ais-steps", "200",
                     "--ais-chains", "8", "--convergence-points", "10")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "gap.json").read_text())
    for key in KEYS:
        assert key in report, key
    assert "log_px_upper" not in report  # the simulated-data bracket is not a bound on these points
    bracket = report["bdmc_simulated"]
    assert bracket["simulated_log_px_lower"] < bracket["simulated_log_px_upper"] + 3 * bracket["width_mc_se"]
    # log p(x) >= L[q*] >= L[q], each up to three stated Monte Carlo standard errors
    exact, local, amortised = report["log_px_exact"], report["elbo_local"], report["elbo_amortised"]
    assert exact >= local - 3 * report["elbo_local_mc_se"]
    assert local >= amortised - 3 * math.hypot(report["elbo_local_mc_se"], report["elbo_amortised_mc_se"])
    assert report["log_px"] - exact <= 2 * report["log_px_mc_se"]  # AIS: a stochastic lower bound
    assert exact - report["log_px"] < 0.1
    assert report["checks"]["log_px_vs_exact"]["status"] == "pass"
    assert amortised <= report["iwae"] + 3 * report["iwae_mc_se"]
    for key in ("log_px", "elbo_local", "elbo_amortised", "approximation_gap", "amortisation_gap"):
        assert 0 < report[f"{key}_mc_se"] < 0.2, key  # stated, and below the 0.2 nats
    total = report["approximation_gap"] + report["amortisation_gap"]
    top = report[report["gaps_from"]]  # log_px, or a bound that sits above its estimate
    assert abs(total - (top - report["elbo_amortised"])) < 1e-9  # exact in the report
    assert "ais_convergence" in report and report["local_opt"]["init"] == "amortised"
    assert "| ffg |" in (tmp_path / "gap.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("guide", ["planar", "auxflow"])
def test_vae_trains_with_flow_guides_and_gets_a_gap_report(guide, tmp_path):
    result = run_cli("--model", "vae", "--guide", guide, "--steps", "2", "--out", tmp_path, "--no-progress",
                     "--iwae-k", "5", "--eval-points", "20", "--train-eval-points", "50")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["train_steps"] == 2 and summary["test_elbo"] <= summary["test_iwae"] < 0
    if guide == "auxflow":  # the reloaded run keeps its reverse model r(v | z, x)
        gap = run_gap("--checkpoint", tmp_path, *FAST_GAP, "--bdmc-points", "0", "--local-steps", "20")
        assert gap.returncode == 0, gap.stderr
        report = json.loads((tmp_path / "gap.json").read_text())
        assert report["guide"] == "auxflow" and "bdmc_simulated" not in report
        assert report["checks"]["bdmc_bracket"]["status"] == "not run"


@pytest.mark.slow
def test_gap_refuses_runs_it_cannot_apply_to(tmp_path, linear_gaussian_run):
    local = tmp_path / "local"
    result = run_cli("--model", "linear_gaussian", "--local", "--steps", "2", "--out", local, "--no-progress",
                     "--iwae-k", "5")
    assert result.returncode == 0, result.stderr
    for args in (["--checkpoint", local], ["--checkpoint", tmp_path / "nothing"],
                 ["--checkpoint", linear_gaussian_run, "--guide", "realnvp"]):
        gap = run_gap(*args, *FAST_GAP)
        assert gap.returncode == 2, gap.stderr
        assert len(gap.stderr.strip().splitlines()) == 1, gap.stderr


def test_a_report_whose_checks_fail_keeps_its_numbers_and_says_so(linear_gaussian_run, tmp_path):
    result = run_gap("--checkpoint", linear_gaussian_run, "--out", tmp_path, *FAST_GAP, "--ais-steps", "1",
                     "--ais-chains", "2", "--local-steps", "1", "--convergence-points", "10")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "gap.json").read_text())
    assert report["converged"] is False and math.isfinite(report["approximation_gap"])
    failed = sorted(name for name, check in report["checks"].items() if check["status"] in ("fail", "inconclusive"))
    assert {"log_px_above_iwae", "ais_doubling", "local_converged"} <= set(failed)
    lines = [line for line in result.stderr.splitlines() if line.startswith("run/gap.py: check ")]
    assert sorted(line.split()[2].rstrip(":") for line in lines) == failed
    assert "NOT CONVERGED" in (tmp_path / "gap.md").read_text()


def test_an_unwritable_destination_is_refused_before_any_work(linear_gaussian_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_gap("--checkpoint", linear_gaussian_run, "--out", blocker / "gap", *FAST_GAP)
    assert result.returncode == 2 and "is a file, not a directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
