"""run/svi.py end to end, in subprocesses: the command line's contract (docs/command_line.md)."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT
from helpers import module_states_equal, run_cli

from lvm_app.cli import parse
from lvm_app.registry import EXPERIMENTS

# Every registered model must be listed here (a test below fails otherwise), with the flags
# that make its two-step run fast.
SMOKE_FLAGS = {
    "vae": ["--iwae-k", "5", "--eval-points", "20", "--train-eval-points", "50"],
    "linear_gaussian": ["--iwae-k", "5"],
    "compile": ["--batch-size", "64", "--eval-batch-size", "64", "--test-nll-particles", "1"],
    "lfm": ["--batch-size", "16", "--importance-samples", "2", "--dev-importance-samples", "2", "--eval-points", "40",
            "--dev-points", "40", "--train-eval-points", "40", "--embedding-dim", "16", "--hidden-dim", "16"],
    "mfcvae": ["--iwae-k", "3", "--eval-points", "60", "--gmm-init-points", "200", "--batch-size", "32"],
    "cpc": ["--width", "16", "--context-dim", "16", "--batch-size", "4", "--eval-batches", "1", "--probe-utterances",
            "30", "--probe-iterations", "10", "--supervised-steps", "2"],
}
NEEDS_DATA_DIR = {"lfm", "cpc"}  # real data only (no download here): skipped without PYRO_MODELS_DATA, as the data tests
RUN_FILES = ["summary.json", "metrics.csv", "config.json", "checkpoint.pt", "training_curve.png"]


def test_every_registered_model_has_a_smoke_run():
    assert set(SMOKE_FLAGS) == set(EXPERIMENTS), "add the new model to SMOKE_FLAGS"


@pytest.mark.parametrize("model", sorted(SMOKE_FLAGS))
def test_two_steps_of_every_model(model, tmp_path):
    if model in NEEDS_DATA_DIR and not os.environ.get("PYRO_MODELS_DATA"):
        pytest.skip("PYRO_MODELS_DATA is not set (CI sets it to ../shared/data)")
    result = run_cli("--model", model, "--steps", "2", "--out", tmp_path, "--no-progress", *SMOKE_FLAGS[model])
    assert result.returncode == 0, result.stderr
    for name in RUN_FILES:
        assert (tmp_path / name).exists(), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["train_steps"] == 2


def test_vae_summary_and_plots(tmp_path):
    result = run_cli("--model", "vae", "--steps", "30", "--out", tmp_path, "--no-progress", *SMOKE_FLAGS["vae"])
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("test_elbo", "test_iwae", "iwae_k", "train_elbo", "num_test_points"):
        assert key in summary, key
    assert summary["iwae_k"] == 5 and summary["num_test_points"] == 20
    assert summary["test_elbo"] <= summary["test_iwae"] < 0
    assert (tmp_path / "reconstructions.png").exists() and (tmp_path / "samples.png").exists()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["run"]["dataset"] == "digits" and config["train"]["steps"] == 30


def test_local_guide_trains_and_scores_training_points(tmp_path):
    result = run_cli("--model", "linear_gaussian", "--local", "--steps", "200", "--out", tmp_path,
                     "--no-progress", "--iwae-k", "200", "--eval-points", "100")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_train_points"] == 100 and "test_iwae" not in summary
    assert summary["train_elbo"] < summary["train_iwae"] <= summary["train_log_px_exact"] + 0.05


def test_help_lists_models_guides_and_datasets():
    result = run_cli("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for name in [*EXPERIMENTS, "ffg", "binarized_mnist", "mnist", "digits"]:
        assert name in text, name
    model_help = run_cli("--model", "vae", "--help")
    assert "--latent-dim" in model_help.stdout and "--iwae-k" in model_help.stdout
    assert "real-site families" in " ".join(model_help.stdout.split())  # which guides apply, and why
    assert "lfm: latent factor" in text and "(guides: bernoulli, concrete)" in text


@pytest.mark.parametrize("flags, named", [
    (["--model", "nope"], "vae"),
    (["--model", "vae", "--guide", "nope"], "ffg"),
    (["--model", "vae", "--dataset", "nope"], "binarized_mnist"),
    (["--model", "vae", "--steps", "0"], "--steps"),
    (["--model", "vae", "--latent-dim", "x"], "latent"),
    (["--model", "lfm", "--guide", "ffg"], "z is a vector of K bits"),  # the reason, not just the choices
    (["--model", "vae", "--guide", "bernoulli"], "real vectors"),
    (["--model", "compile", "--guide", "realnvp"], "its own structured guide"),
    (["--model", "cpc", "--guide", "ffg"], "takes no --guide"),
])
def test_bad_usage_exits_2_naming_the_valid_choices(flags, named):
    result = run_cli(*flags)
    assert result.returncode == 2
    assert named in result.stderr


def test_missing_data_file_exits_1_naming_file_directory_and_remedy(tmp_path):
    env = {**os.environ, "PYRO_MODELS_DATA": str(tmp_path)}
    result = run_cli("--model", "vae", "--dataset", "binarized_mnist", "--steps", "1", "--out", tmp_path / "o", env=env)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert "binarized_mnist/binarized_mnist_uint8.npz" in message
    assert str(tmp_path) in message and "PYRO_MODELS_DATA" in message and "--data-dir" in message


def test_corrupt_data_file_is_detected(tmp_path, data_dir):
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    original = (data_dir / "binarized_mnist" / "binarized_mnist_uint8.npz").read_bytes()
    (folder / "binarized_mnist_uint8.npz").write_bytes(original[: len(original) // 2])  # truncated
    result = run_cli("--model", "vae", "--dataset", "binarized_mnist", "--data-dir", tmp_path, "--steps", "1",
                     "--out", tmp_path / "o")
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr and "truncated or corrupt" in result.stderr


@pytest.mark.slow
def test_sigint_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    flags = ["--model", "vae", "--steps", "600", "--log-every", "20", "--no-progress", "--iwae-k", "2",
             "--eval-points", "10", "--train-eval-points", "10"]
    straight = run_cli(*flags, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, str(ROOT / "run" / "svi.py"), *flags, "--out", str(out)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr
    step = torch.load(out / "checkpoint.pt", weights_only=False)["step"]
    assert 0 < step < 600

    resumed = run_cli(*flags, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["modules"]
    b = torch.load(out / "checkpoint.pt", weights_only=False)["modules"]
    assert all(module_states_equal(a[name], b[name]) for name in a)
    assert (out / "metrics.csv").read_text() .count("\n") == (tmp_path / "straight" / "metrics.csv").read_text().count("\n")


def test_resume_refuses_changed_settings(tmp_path):
    first = run_cli("--model", "linear_gaussian", "--steps", "3", "--out", tmp_path, "--iwae-k", "2")
    assert first.returncode == 0, first.stderr
    again = run_cli("--model", "linear_gaussian", "--steps", "6", "--out", tmp_path, "--iwae-k", "2",
                    "--batch-size", "50", "--resume")
    assert again.returncode == 1 and "batch_size" in again.stderr


def test_nan_during_training_exits_1_and_keeps_the_checkpoint(tmp_path):
    """A learning rate that blows up the linear-Gaussian model stops the run, naming the step."""
    result = run_cli("--model", "linear_gaussian", "--steps", "400", "--lr", "1e12", "--checkpoint-every", "1",
                     "--out", tmp_path, "--no-progress")
    assert result.returncode == 1, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "became non-finite at step" in message and "last good checkpoint" in message
    # the parameters that gave the non-finite loss are not left as the run's checkpoint
    kept = tmp_path / "checkpoint.pt"
    assert kept.exists() or (tmp_path / "checkpoint.diverged.pt").exists(), message
    if kept.exists():
        state = torch.load(kept, weights_only=False)
        assert all(torch.isfinite(v).all() for s in state["modules"].values() for v in s.values())


DOCUMENTED = ("run/svi.py", "run/gap.py", "run/probe.py", "run/gap_atlas.py")


def documented_commands():
    """Every ``python run/<command>.py ...`` in the code blocks of the README and docs/
    (continuation lines joined; synopses, commands with shell variables and elisions left out)."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        for line in text.splitlines():
            code = line.split("#")[0] if line.startswith("    ") else ""  # code blocks only
            for script in DOCUMENTED:
                if f"python {script}" in code:
                    command = code[code.find(f"python {script}"):]
                    if not any(mark in command for mark in ("...", "$", "[")):
                        yield str(path.relative_to(ROOT)), script, shlex.split(command)[2:]


def test_the_documents_hold_commands_of_every_kind():
    assert {script for _, script, _ in documented_commands()} >= {"run/svi.py", "run/gap.py", "run/gap_atlas.py"}


@pytest.mark.parametrize("where, script, argv", list(documented_commands()),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_documented_command_parses(where, script, argv):
    """SystemExit (exit 2) on a flag that does not exist or a value that is refused."""
    from lvm_app import gap, gap_atlas
    from lvm_app import probe as probe_cli

    if script == "run/svi.py":
        parse(argv)
    else:
        module = {"run/gap.py": gap, "run/probe.py": probe_cli, "run/gap_atlas.py": gap_atlas}[script]
        module.build_parser().parse_args(argv)


@pytest.mark.parametrize("script, args", [("pyro-lvm-train", ["--model", "vae", "--latent-dim", "0"]),
                                          ("pyro-lvm-gap", ["--checkpoint", "/nonexistent-run"])])
def test_installed_commands_name_themselves_in_their_messages(script, args):
    import shutil

    if shutil.which(script) is None:
        pytest.skip(f"{script} is not installed (pip install -e .)")
    result = subprocess.run([script, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(f"{script}: error:")


@pytest.mark.parametrize("command, argv", [
    ("svi", ["--model", "vae", "--shards", "0"]),
    ("svi", ["--model", "lfm", "--precision", "bf16"]),
    ("svi", ["--model", "vae", "--data-workers", "1"]),  # a CPC setting
    ("gap", ["--checkpoint", "runs/x", "--no-such-flag"]),
    ("probe", ["--run", "runs/x", "--no-such-flag"]),
    ("atlas", ["--no-such-flag"]),
])
def test_parse_errors_are_one_line_with_exit_2(command, argv, capsys):
    """Not argparse's usage block before the reason: one line, as every other refusal."""
    from lvm_app import gap, gap_atlas
    from lvm_app import probe as probe_cli

    main = {"svi": parse, "gap": gap.main, "probe": probe_cli.main, "atlas": gap_atlas.main}[command]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err and "usage:" not in err, err


def test_ctrl_c_while_the_command_starts_is_one_line_and_exit_130(tmp_path):
    """Loading torch takes seconds; a Ctrl-C then (or just after, whatever this machine's speed) is
    one line and exit 130, never a traceback."""
    process = subprocess.Popen([sys.executable, str(ROOT / "run" / "svi.py"), "--model", "vae", "--out",
                                str(tmp_path / "run"), "--no-progress"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("run/svi.py: ")


def test_the_summary_counts_the_training_points_it_scored(tmp_path):
    """--train-eval-points above the training set's size scores every point, and says how many."""
    from lvm_app import cli

    assert cli.main(["--model", "vae", "--steps", "1", "--iwae-k", "2", "--eval-points", "5", "--train-eval-points",
                     "100000", "--out", str(tmp_path), "--no-progress"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["num_train_points"] == 1500  # the digits' training set
