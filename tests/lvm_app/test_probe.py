"""``run/svi.py --model cpc`` on a tiny FSDD written here: the summary keys of the issue, the plots,
and one-line errors for bad input. (The two-step run on the real FSDD is in test_cli.py.)"""
import json
import subprocess
import sys

import pytest
from conftest import ROOT
from helpers import run_cli
from speech_fixtures import write_tiny_fsdd

from pyro_models.cpc.experiment import parse_baselines

KEYS = ["speaker_acc", "phone_acc", "infonce_acc_k1", "infonce_acc_k4"] + [
    f"baseline_{name}_{task}_acc" for name in ("random", "mfcc", "supervised") for task in ("speaker", "phone")]
TINY = ["--width", "8", "--context-dim", "8", "--prediction-steps", "4", "--window", "1920", "--batch-size", "4",
        "--eval-batches", "1", "--probe-iterations", "5", "--supervised-steps", "2", "--no-progress"]


@pytest.mark.slow
def test_summary_keys_and_plots(tmp_path):
    data = write_tiny_fsdd(tmp_path / "data")
    result = run_cli("--model", "cpc", "--data-dir", data, "--steps", "3", "--out", tmp_path / "run", "--eval", "paper",
                     *TINY)  # the paper's protocol: every baseline (a quick one leaves out the supervised ones)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in KEYS:
        assert 0 <= summary[key] <= 1, key
    assert summary["num_train_utterances"] == 8 and summary["num_test_utterances"] == 8
    assert summary["train_audio_s_per_s"] > 0 and summary["train_steps"] == 3
    for name in ("training_curve.png", "infonce_accuracy.png", "probes.png"):
        assert (tmp_path / "run" / name).exists(), name

    # run/probe.py re-evaluates the run directory with other evaluation settings; --keep keeps the rest
    result = subprocess.run([sys.executable, str(ROOT / "run" / "probe.py"), "--run", str(tmp_path / "run"),
                             "--baselines", "mfcc", "--keep", "--no-progress"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    again = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert again["evaluated_by"] == "run/probe.py" and again["train_steps"] == 3
    assert set(summary) - set(again) == set()  # every key run/svi.py wrote is written again
    assert again["train_loss_last"] == summary["train_loss_last"] and again["eval"] == summary["eval"]
    assert again["baseline_mfcc_phone_acc"] == summary["baseline_mfcc_phone_acc"]
    assert again["baseline_supervised_phone_acc"] == summary["baseline_supervised_phone_acc"]  # kept (--keep)
    assert again["baseline_random_speaker_acc"] == summary["baseline_random_speaker_acc"]


@pytest.mark.parametrize("flags, message", [
    (["--window", "1000"], "--window must be a positive multiple of 160"),
    (["--encoder-layers", "1-8-10-5"], "six non-negative integers"),
])
def test_bad_settings_exit_2_with_one_line_before_reading_data(flags, message, tmp_path):
    data = write_tiny_fsdd(tmp_path / "data")
    result = run_cli("--model", "cpc", "--data-dir", data, "--steps", "1", "--out", tmp_path / "run", *flags)
    assert result.returncode == 2  # bad usage, as the contract says
    error = result.stderr.strip().splitlines()[-1]  # after argparse's usage line
    assert error.startswith("run/svi.py: error:") and message in error, result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_data_says_what_to_do(tmp_path):
    result = run_cli("--model", "cpc", "--data-dir", tmp_path, "--steps", "1", "--out", tmp_path / "o")
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert "fsdd/recordings" in message and "Free Spoken Digit" in message and "--data-dir" in message


def test_baseline_list_is_checked():
    assert parse_baselines(" mfcc,random ") == ["mfcc", "random"] and parse_baselines("") == []
    with pytest.raises(ValueError, match=r"unknown baseline\(s\) nope; choose from: random, mfcc, supervised"):
        parse_baselines("mfcc,nope")
