"""Evaluation whose cost fits the run: ``--eval quick|paper|auto``, the plan and its cost printed
before evaluation starts, subsets spread over a split, MFCVAE's schedule fitted to the run, and
``run/gap.py``'s plan."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from helpers import run_cli

from lvm_app import cli
from lvm_app.eval_mode import choose_protocol, settings_for
from lvm_app.registry import EXPERIMENTS
from pyro_models.core import evaluation_settings
from pyro_models.datasets.vector_data import evenly_spaced
from pyro_models.mfcvae.experiment import BUDGETS, DATASETS, MFCVAEConfig

LINEAR = ["--model", "linear_gaussian", "--no-progress"]


def test_quick_settings_are_evaluation_settings_and_valid():
    """A quick protocol may only change what evaluation does (a resume may change those)."""
    for experiment in EXPERIMENTS.values():
        assert set(experiment.quick_evaluation) <= evaluation_settings(experiment.settings_cls), experiment.name
        settings_for(experiment, experiment.settings_cls(), set(), "quick")


def test_auto_is_the_paper_protocol_at_the_default_length_only():
    vae = EXPERIMENTS["vae"]
    assert choose_protocol("auto", vae, 100_000, 100_000)[0] == "paper"
    assert choose_protocol("auto", vae, 1500, 100_000)[0] == "quick"
    assert choose_protocol("paper", vae, 1500, 100_000)[0] == "paper"
    assert choose_protocol("auto", EXPERIMENTS["compile"], 10, 100)[0] == "paper"  # one evaluation only


def test_flags_given_win_over_the_protocol():
    vae = EXPERIMENTS["vae"]
    settings = settings_for(vae, vae.settings_cls(iwae_k=7), {"iwae_k"}, "quick")
    assert settings.iwae_k == 7 and settings.eval_points == vae.quick_evaluation["eval_points"]
    assert settings_for(vae, settings, {"iwae_k"}, "paper").eval_points == 0  # all test points


def test_the_plan_is_printed_and_the_protocol_recorded(tmp_path, capsys):
    assert cli.main([*LINEAR, "--steps", "20", "--out", str(tmp_path / "quick")]) == 0
    err = capsys.readouterr().err
    assert "evaluation (quick: 20 training steps, fewer than the model's default 2000)" in err
    assert "IWAE-100" in err and "--eval paper: about" in err
    summary = json.loads((tmp_path / "quick" / "summary.json").read_text())
    assert summary["eval"] == "quick" and summary["iwae_k"] == 100

    assert cli.main([*LINEAR, "--steps", "20", "--eval", "paper", "--out", str(tmp_path / "paper")]) == 0
    assert json.loads((tmp_path / "paper" / "summary.json").read_text())["iwae_k"] == 5000


def test_a_finished_run_is_re_evaluated_with_the_paper_protocol(tmp_path):
    out = str(tmp_path / "run")
    assert cli.main([*LINEAR, "--steps", "20", "--out", out]) == 0
    config = (tmp_path / "run" / "config.json").read_text()
    assert cli.main([*LINEAR, "--steps", "20", "--out", out, "--resume", "--eval", "paper", "--iwae-k", "50"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval"] == "paper" and summary["iwae_k"] == 50
    assert (tmp_path / "run" / "config.json").read_text() == config  # the run's record is unchanged


def test_subsets_are_spread_over_the_split():
    """Binarised MNIST's test split is ordered by class: a subset must not be its first points."""
    rows = evenly_spaced(1000, 10000)
    assert rows[0] == 0 and rows[-1] == 9999 and len(rows.unique()) == 1000
    assert torch.equal(evenly_spaced(0, 5), torch.arange(5)) and torch.equal(evenly_spaced(9, 5), torch.arange(5))


def test_every_mfcvae_data_set_has_its_own_budget():
    assert set(BUDGETS) == set(DATASETS)


@pytest.mark.parametrize("steps", [2, 300, 3000, 30000])
def test_mfcvae_fits_its_schedule_to_the_run(steps):
    """Every facet fades in within the run, whatever its length; the defaults are never stretched."""
    experiment = EXPERIMENTS["mfcvae"]
    for dims in [(5, 5), (5, 5, 5)]:
        fitted = experiment.fit_to_length(experiment.context(config=MFCVAEConfig(latent_dims=dims)), steps, set())
        assert (len(dims) - 1) * fitted.phase_steps + fitted.fade_in_steps <= max(steps, len(dims))
        assert fitted.phase_steps <= BUDGETS["digits"].phase_steps
    fitted = experiment.fit_to_length(experiment.context(), 3000, set())
    assert (fitted.phase_steps, fitted.fade_in_steps) == (1000, 1000)


def test_mfcvae_refuses_a_given_schedule_longer_than_the_run(tmp_path):
    result = run_cli("--model", "mfcvae", "--steps", "300", "--phase-steps", "200", "--fade-in-steps", "200",
                     "--out", tmp_path / "run")
    assert result.returncode == 2 and "only after 400 steps" in result.stderr
    assert not (tmp_path / "run" / "config.json").exists()


def test_the_gap_report_prints_its_plan_first(tmp_path):
    out = tmp_path / "run"
    assert cli.main([*LINEAR, "--steps", "20", "--iwae-k", "2", "--out", str(out)]) == 0
    result = run_gap("--checkpoint", out, "--num-points", "3", "--ais-steps", "4", "--ais-chains", "2",
                     "--ais-leapfrog", "2", "--bdmc-points", "0", "--iwae-k", "5", "--elbo-samples", "5",
                     "--local-steps", "3", "--out", tmp_path / "gap")
    assert result.returncode == 0, result.stderr
    plan = [line for line in result.stderr.splitlines() if line.startswith("run/gap.py: plan:")]
    assert len(plan) == 1 and "3 train points: AIS 4 steps x 2 chains" in plan[0] and "timed on pilots" in plan[0]



def run_gap(*args):
    return subprocess.run([sys.executable, str(ROOT / "run" / "gap.py"), *map(str, args), "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ})


@pytest.mark.parametrize("args, message", [
    (["--run", "/nonexistent-run"], "not a run directory"),
    (["--run", "RUN", "--baselines", "foo"], "unknown baseline"),
    (["--run", "RUN"], "is a linear_gaussian run"),
])
def test_probe_bad_usage_exits_2_with_one_line(args, message, tmp_path):
    out = tmp_path / "run"
    assert cli.main([*LINEAR, "--steps", "2", "--iwae-k", "2", "--out", str(out)]) == 0
    args = [str(out) if a == "RUN" else a for a in args]
    result = subprocess.run([sys.executable, str(ROOT / "run" / "probe.py"), *args], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_the_compile_gap_report_refuses_more_points_than_the_task_has(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["--model", "compile", "--steps", "2", "--batch-size", "64", "--eval-batch-size", "64",
                     "--test-nll-particles", "1", "--no-progress", "--out", str(out)]) == 0
    result = run_gap("--checkpoint", out, "--num-points", "100000", "--out", tmp_path / "gap")
    assert result.returncode == 2 and "only 3840 distinct sequences" in result.stderr


def test_the_compile_gap_report_caps_its_points_by_the_memory_of_a_larger_task(tmp_path):
    """A task of 6 segments of up to 10 symbols has millions of boundary configurations per sequence:
    any number of points is refused at once, before any point is made (memory would grow without bound)."""
    out = tmp_path / "run"
    assert cli.main(["--model", "compile", "--num-symbols", "30", "--num-segments", "6", "--max-segment-length", "10",
                     "--steps", "1", "--batch-size", "4", "--eval-batch-size", "4", "--test-nll-particles", "1",
                     "--hidden-dim", "8", "--latent-dim", "4", "--no-progress", "--out", str(out)]) == 0
    result = run_gap("--checkpoint", out, "--num-points", "100000000", "--out", tmp_path / "gap")
    assert result.returncode == 2, result.stderr
    assert "boundary configurations" in result.stderr and "MiB per point" in result.stderr


def test_the_gap_plans_pilots_leave_the_random_state_as_it_was():
    from lvm_app.gap_plan import leapfrog_seconds
    from pyro_models import LinearGaussian, LinearGaussianConfig

    model = LinearGaussian(LinearGaussianConfig(data_dim=4, latent_dim=2))
    torch.manual_seed(3)
    x = torch.randn(3, 4)
    before = torch.get_rng_state()
    assert leapfrog_seconds(model.model, {"x": x}, chains=2, leapfrog=2, nesting=1) > 0
    assert torch.equal(torch.get_rng_state(), before)
