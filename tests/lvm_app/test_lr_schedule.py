"""--lr-schedule iwae: Burda et al.'s rates (Cremer et al.'s training protocol), by epoch, kept on resume."""
import json

import pytest
import torch

from inference.training.schedules import iwae_learning_rates, iwae_schedule_epochs
from lvm_app import cli


def test_stage_i_lasts_3_to_the_i_epochs_at_10_to_the_minus_i_over_7():
    per_epoch = 10
    factor = iwae_learning_rates(per_epoch)
    starts = [0, 1, 4, 13, 40, 121, 364, 1093]  # epochs at which stages 0..7 begin
    for stage, epoch in enumerate(starts):
        assert factor(epoch * per_epoch) == pytest.approx(10 ** (-stage / 7)), stage
        if epoch:
            assert factor(epoch * per_epoch - 1) == pytest.approx(10 ** (-(stage - 1) / 7)), stage
    assert iwae_schedule_epochs() == 3280
    assert factor(3280 * per_epoch) == factor(10 ** 9) == pytest.approx(10 ** (-1))  # the last rate stays
    with pytest.raises(ValueError, match="one step per epoch"):
        iwae_learning_rates(0)


def rows(out) -> list[dict]:
    lines = (out / "metrics.csv").read_text().splitlines()
    return [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]


ARGV = ["--model", "vae", "--batch-size", "500", "--log-every", "1", "--iwae-k", "2", "--eval-points", "10",
        "--train-eval-points", "10", "--no-progress"]


def test_the_run_logs_the_scheduled_rate_and_a_resume_keeps_the_schedule(tmp_path):
    """Digits: 1500 training points, 3 steps per epoch of 500. The resume does not repeat the flag."""
    out = tmp_path / "run"
    assert cli.main([*ARGV, "--lr-schedule", "iwae", "--lr", "1e-3", "--steps", "4", "--out", str(out)]) == 0
    assert cli.main([*ARGV, "--lr", "1e-3", "--steps", "14", "--out", str(out), "--resume"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["lr_schedule"] == "iwae" and "resumed" not in config
    rates = [float(row["lr"]) for row in rows(out)]
    expected = [1e-3 * 10 ** (-(0 if step < 3 else 1 if step < 12 else 2) / 7) for step in range(14)]
    assert rates == pytest.approx(expected)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected[-1])


def test_a_constant_run_is_unchanged_and_logs_no_rate(tmp_path):
    out = tmp_path / "run"
    assert cli.main([*ARGV, "--steps", "2", "--out", str(out)]) == 0
    assert "lr" not in rows(out)[0]
    assert json.loads((out / "config.json").read_text())["train"]["lr_schedule"] == "constant"


def test_a_resume_may_not_change_the_schedule(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([*ARGV, "--steps", "2", "--out", str(out)]) == 0
    assert cli.main([*ARGV, "--steps", "4", "--lr-schedule", "iwae", "--out", str(out), "--resume"]) == 1
    assert "lr_schedule: 'constant' -> 'iwae'" in capsys.readouterr().err

