"""Nothing lost, nothing executed, nothing silently wrong: run directories are never clobbered,
checkpoints never run code, two runs never share a directory, bad values are refused up front."""
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from helpers import run_cli

from inference.training.checkpoint import load_checkpoint, save_checkpoint
from inference.training.loop import TrainingDiverged, TrainSettings, train
from lvm_app.cli import main, parse
from lvm_app.registry import EXPERIMENTS
from pyro_models.core import check_settings

TINY_VAE = ["--model", "vae", "--no-progress", "--iwae-k", "2", "--eval-points", "10", "--train-eval-points", "10"]


def test_every_default_passes_its_own_validation():
    for experiment in EXPERIMENTS.values():
        for cls in (experiment.config_cls, experiment.settings_cls):
            check_settings(cls())
        experiment.validate(experiment.context())


@pytest.mark.parametrize("flags", [
    ["--model", "vae", "--latent-dim", "0"], ["--model", "lfm", "--latent-bits", "0"],
    ["--model", "lfm", "--prior-prob", "1.5"], ["--model", "compile", "--num-segments", "0"],
    ["--model", "compile", "--latent-dim", "0"], ["--model", "vae", "--decoder-hidden", ","],
    ["--model", "mfcvae", "--clusters", "0,25"], ["--model", "mfcvae", "--latent-dims", "0,5"],
    ["--model", "vae", "--lr", "nan"], ["--model", "vae", "--lr", "inf"], ["--model", "vae", "--clip-norm", "nan"],
    ["--model", "cpc", "--window", "100"], ["--model", "cpc", "--encoder-layers", "2-3"],
])
def test_bad_values_exit_2_with_one_line_before_anything_is_written(flags, tmp_path):
    out = tmp_path / "run"
    result = run_cli(*flags, "--steps", "1", "--out", out)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("run/svi.py: error: ")
    assert "Traceback" not in result.stderr and not out.exists()


@pytest.mark.parametrize("flags", [
    ["--model", "vae", "--seed", "-1"], ["--model", "compile", "--beta-b", "-1"], ["--model", "compile", "--beta-z", "-1"],
    ["--model", "linear_gaussian", "--noise-scale", "1e30"], ["--model", "cpc", "--probe-weight-decay", "-1"],
    ["--model", "vae", "--epochs", "1e30"], ["--model", "vae", "--steps", "10000000000"],
])
def test_values_that_failed_late_or_loudly_are_refused_in_one_line_up_front(flags, tmp_path, capsys):
    """These passed the checks before and failed at run time (after the run directory was made) or
    printed a screen of text."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main([*flags, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("run/svi.py: error: ") and not out.exists()


@pytest.mark.parametrize("flags", [["--epochs", "nan"], ["--epochs", "inf"]])
def test_non_finite_lengths_are_refused(flags, tmp_path):
    result = run_cli("--model", "vae", *flags, "--out", tmp_path / "run")
    assert result.returncode == 2 and "finite" in result.stderr


@pytest.mark.slow
def test_a_run_directory_is_never_replaced_without_being_asked(tmp_path):
    out = tmp_path / "run"
    assert run_cli(*TINY_VAE, "--steps", "2", "--out", out).returncode == 0
    before = {name: (out / name).read_bytes() for name in ("config.json", "checkpoint.pt", "metrics.csv", "summary.json")}
    again = run_cli(*TINY_VAE, "--steps", "3", "--seed", "1", "--out", out)
    assert again.returncode == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr
    assert {name: (out / name).read_bytes() for name in before} == before  # untouched
    replaced = run_cli(*TINY_VAE, "--steps", "3", "--seed", "1", "--out", out, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((out / "config.json").read_text())["run"]["seed"] == 1


def test_the_default_run_directory_names_the_seed():
    _, _, args = parse(["--model", "vae", "--seed", "3"])
    assert args.out == Path("runs/vae-digits-ffg-seed3")


def test_a_second_run_into_a_directory_in_use_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242")
        lock.flush()
        result = run_cli(*TINY_VAE, "--steps", "1", "--out", out)
    assert result.returncode == 2 and "in use by another run (process 4242)" in result.stderr
    assert not (out / "config.json").exists()


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 1, "modules": {}, "evil": Payload()}, path)
    with pytest.raises(RuntimeError, match="would run code"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists() and not os.path.exists("PWNED")


def test_checkpoints_load_as_plain_tensors_and_restore_every_random_state(tmp_path):
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(module.parameters())
    module(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "c.pt", 7, {"m": module}, optimizer, {"elapsed_s": 1.5})
    state = load_checkpoint(tmp_path / "c.pt")  # weights_only: would raise on anything else
    assert state["step"] == 7 and state["extra"]["elapsed_s"] == 1.5
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    save_checkpoint(tmp_path / "c.pt", 7, {"m": module}, optimizer)
    torch.rand(3)  # move on, then restore
    from inference.training.checkpoint import set_rng_state
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert torch.equal(torch.rand(3), expected)


def test_each_gpu_generator_travels_in_the_checkpoint(tmp_path, monkeypatch):
    """On a GPU, noise drawn on the device comes from its own generators: saved, and restored on
    a machine with as many GPUs (here the CUDA calls are stand-ins: these machines have none)."""
    saved_states, restored = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3], dtype=torch.uint8)], []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved_states)
    module = torch.nn.Linear(2, 1)
    save_checkpoint(tmp_path / "c.pt", 1, {"m": module}, None)
    state = load_checkpoint(tmp_path / "c.pt")["rng"]
    assert [t.tolist() for t in state["cuda"]] == [[1, 2], [3]]
    from inference.training.checkpoint import set_rng_state
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    set_rng_state(state)
    assert [[t.tolist() for t in states] for states in restored] == [[[1, 2], [3]]]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # another machine: its own generators stay
    set_rng_state(state)
    assert len(restored) == 1


def test_a_non_finite_parameter_is_never_checkpointed(tmp_path):
    module = torch.nn.Linear(2, 1)
    save_checkpoint(tmp_path / "checkpoint.pt", 1, {"model": module}, None)
    good = (tmp_path / "checkpoint.pt").read_bytes()

    def objective(batch):
        loss = module(batch["x"]).sum()
        loss.backward()
        return loss.item()

    with pytest.raises(TrainingDiverged, match="not finite"):
        train(objective, {"model": module}, lambda step: {"x": torch.ones(4, 2)},
              TrainSettings(steps=1, lr=float("inf"), progress=False), tmp_path, resume=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == good  # the last good checkpoint stays
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")]  # no half-written file


@pytest.mark.slow
def test_resume_with_fewer_steps_re_evaluates_and_leaves_the_checkpoint_as_it_was(tmp_path):
    out = tmp_path / "run"
    assert run_cli(*TINY_VAE, "--steps", "3", "--out", out).returncode == 0  # log_every 100 > steps
    checkpoint = (out / "checkpoint.pt").read_bytes()
    again = run_cli(*TINY_VAE, "--steps", "2", "--out", out, "--resume")
    assert again.returncode == 0, again.stderr
    assert (out / "checkpoint.pt").read_bytes() == checkpoint
    assert json.loads((out / "summary.json").read_text())["train_steps"] == 3


def test_a_malformed_run_configuration_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    result = subprocess.run([sys.executable, str(ROOT / "run" / "gap.py"), "--checkpoint", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode != 0 and str(tmp_path / "config.json") in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_atlas_report_of_an_empty_folder_is_an_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "run" / "gap_atlas.py"), "--report-only", "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1 and "no gap reports" in result.stderr


def test_loading_a_run_leaves_the_callers_param_store_alone(tmp_path):
    """A notebook that loads a run for its gap report keeps its own parameters."""
    import pyro

    from lvm_app.run_dir import load_run

    out = tmp_path / "run"
    assert main(["--model", "linear_gaussian", "--steps", "2", "--iwae-k", "2", "--no-progress", "--out", str(out)]) == 0
    pyro.clear_param_store()
    pyro.param("my_own", torch.ones(3))
    run = load_run(out)
    assert torch.equal(pyro.param("my_own"), torch.ones(3)) and run.step == 2
