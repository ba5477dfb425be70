"""Every kind of run survives an interruption: SIGTERM mid-training exits 130 with a checkpoint,
``--resume`` finishes it, and the result (modules, metrics.csv, summary.json) is the run that
never stopped. Runs are in-process (``lvm_app.cli.main``) and the signal is sent by the batch
function at a chosen step, so the interruption point is exact rather than timed."""
import json
import os
import signal

import pytest
import torch
from helpers import module_states_equal

from lvm_app import cli
from lvm_app.registry import EXPERIMENTS
from pyro_models.compilation import compiler_missing, set_compiled_likelihoods

NEEDS_DATA = pytest.mark.skipif(not os.environ.get("PYRO_MODELS_DATA"),
                                reason="PYRO_MODELS_DATA is not set (CI sets it to ../shared/data)")
TIMING_KEYS = {"elapsed_s", "train_wall_s", "eval_wall_s", "eval_wall_s_parts", "train_audio_s_per_s"}

CASES = {
    "vae-auxflow": ["--model", "vae", "--guide", "auxflow", "--steps", "12", "--log-every", "5", "--iwae-k", "3",
                    "--eval-points", "20", "--train-eval-points", "20"],
    "vae-iwae-dreg": ["--model", "vae", "--objective", "iwae", "--particles", "4", "--gradient", "dreg", "--steps", "12",
                      "--log-every", "5", "--iwae-k", "3", "--eval-points", "20", "--train-eval-points", "20"],
    "vae-refine-detach": ["--model", "vae", "--refine", "3", "--refine-mode", "detach", "--kl-warmup-steps", "10",
                          "--steps", "12", "--log-every", "5", "--iwae-k", "3", "--eval-points", "20",
                          "--train-eval-points", "20"],
    # 3 steps per epoch: the interruption (step 7) falls in the schedule's second stage (epochs 1-4)
    "vae-lr-schedule": ["--model", "vae", "--lr-schedule", "iwae", "--batch-size", "500", "--steps", "12",
                        "--log-every", "5", "--iwae-k", "3", "--eval-points", "20", "--train-eval-points", "20"],
    "vae-local": ["--model", "vae", "--local", "--steps", "12", "--log-every", "5", "--batch-size", "50",
                  "--iwae-k", "3", "--eval-points", "20"],
    # the interruption (step 7) falls inside the fade-in of the second facet (steps 4 to 10)
    "mfcvae-fade-in": ["--model", "mfcvae", "--steps", "12", "--log-every", "5", "--phase-steps", "4",
                       "--fade-in-steps", "6", "--iwae-k", "3", "--eval-points", "40", "--gmm-init-points", "200",
                       "--batch-size", "32", "--log-eval-points", "40"],
    "compile": ["--model", "compile", "--steps", "12", "--log-every", "5", "--batch-size", "64",
                "--eval-batch-size", "64", "--test-nll-particles", "1"],
    "cpc": ["--model", "cpc", "--steps", "12", "--log-every", "5", "--width", "16", "--context-dim", "16",
            "--batch-size", "4", "--eval-batches", "1", "--probe-utterances", "30", "--probe-iterations", "5",
            "--baselines", ""],
}
NEEDS_DATA_DIR = {"cpc"}
STOP_AT = 7


def run(argv, out, *extra) -> int:
    return cli.main([*argv, "--out", str(out), "--no-progress", *extra])


def terminate_at(monkeypatch, model: str, step: int) -> None:
    """The run's batch function sends this process SIGTERM when asked for ``step``'s batch."""
    experiment = EXPERIMENTS[model]
    original = experiment.batches

    def batches(ctx, data):
        batch_for_step = original(ctx, data)

        def batch(s):
            if s == step:
                os.kill(os.getpid(), signal.SIGTERM)
            return batch_for_step(s)

        return batch

    monkeypatch.setattr(experiment, "batches", batches)


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def metrics(out) -> list[dict]:
    lines = (out / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    return without_timings([dict(zip(header, line.split(","))) for line in lines[1:]])


def summary(out) -> dict:
    return without_timings([json.loads((out / "summary.json").read_text())])[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_sigterm_then_resume_is_the_uninterrupted_run(case, tmp_path, monkeypatch, capsys):
    argv = CASES[case]
    model = argv[1]
    if model in NEEDS_DATA_DIR and not os.environ.get("PYRO_MODELS_DATA"):
        pytest.skip("PYRO_MODELS_DATA is not set (CI sets it to ../shared/data)")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run(argv, straight) == 0

    with monkeypatch.context() as patch:
        terminate_at(patch, model, STOP_AT)
        assert run(argv, stopped) == 130
    assert "continue with --resume" in capsys.readouterr().err
    state = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert state["step"] == STOP_AT + 1  # the step under way finishes, then the checkpoint
    assert not (stopped / "summary.json").exists()

    assert run(argv, stopped, "--resume") == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=True)["modules"]
    b = torch.load(stopped / "checkpoint.pt", weights_only=True)["modules"]
    assert a.keys() == b.keys()
    for name in a:
        assert module_states_equal(a[name], b[name]), name
    assert metrics(stopped) == metrics(straight)  # the row spanning the interruption included
    assert summary(stopped) == summary(straight)


def test_reloading_a_finished_run_reproduces_its_summary(tmp_path):
    argv = CASES["vae-auxflow"]
    out = tmp_path / "run"
    assert run(argv, out) == 0
    first, config, checkpoint = summary(out), (out / "config.json").read_text(), (out / "checkpoint.pt").read_bytes()
    assert run(argv, out, "--resume") == 0  # nothing left to train: evaluate the checkpoint again
    assert summary(out) == first
    assert (out / "config.json").read_text() == config and (out / "checkpoint.pt").read_bytes() == checkpoint


def test_a_resume_may_lower_the_learning_rate_and_logs_it(tmp_path):
    argv = ["--model", "linear_gaussian", "--steps", "6", "--log-every", "3", "--iwae-k", "2"]
    out = tmp_path / "run"
    assert run(argv, out) == 0
    assert run([*argv[:3], "12", *argv[4:]], out, "--resume", "--lr", "1e-4", "--clip-norm", "5") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["lr"] == 1e-4 and config["train"]["steps"] == 12
    assert config["resumed"] == [{"at_step": 6, "changed": {"lr": [0.01, 1e-4], "clip_norm": [None, 5.0]}}]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert all(group["lr"] == 1e-4 for group in state["optimizer"]["param_groups"])


def test_a_resume_may_not_change_the_model(tmp_path, capsys):
    argv = ["--model", "linear_gaussian", "--steps", "3", "--iwae-k", "2"]
    out = tmp_path / "run"
    assert run(argv, out) == 0
    assert run(argv, out, "--resume", "--latent-dim", "3") == 1
    assert "latent_dim" in capsys.readouterr().err


def test_a_run_written_before_a_setting_existed_still_resumes(tmp_path):
    """A setting added since the run was written is taken at its default (what the run used)."""
    argv = ["--model", "linear_gaussian", "--steps", "4", "--iwae-k", "2"]
    out = tmp_path / "run"
    assert run(argv, out) == 0
    config = json.loads((out / "config.json").read_text())
    del config["settings"]["objective"], config["settings"]["refine"]  # as an older version wrote it
    (out / "config.json").write_text(json.dumps(config))
    assert run([*argv[:3], "8", *argv[4:]], out, "--resume") == 0
    assert run([*argv[:3], "12", *argv[4:]], out, "--resume", "--refine", "2") == 1  # not the default: refused


def test_the_advice_after_a_divergence_works_a_lower_rate_resumes(tmp_path, capsys):
    """--lr 1e30 blows the parameters up in one step: the checkpoint written then is not a good one,
    and --resume with a lower --lr (what the message advises) trains from parameters that did."""
    argv = ["--model", "vae", "--steps", "6", "--log-every", "3", "--checkpoint-every", "1", "--iwae-k", "3",
            "--eval-points", "20", "--train-eval-points", "20"]
    assert run([*argv, "--lr", "1e30"], tmp_path) == 1
    assert "became non-finite at step 2" in capsys.readouterr().err
    assert run([*argv, "--lr", "1e-3"], tmp_path, "--resume") == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["train_steps"] == 6 and all(torch.isfinite(torch.tensor(v)) for k, v in summary.items()
                                               if k.startswith("test_") and isinstance(v, float))


def test_a_resume_may_write_checkpoints_more_or_less_often_and_logs_it(tmp_path):
    argv = ["--model", "linear_gaussian", "--steps", "6", "--log-every", "3", "--checkpoint-every", "3",
            "--iwae-k", "3"]
    assert run(argv, tmp_path) == 0
    assert run([*argv[:3], "9", *argv[4:7], "1", *argv[8:]], tmp_path, "--resume") == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["resumed"] == [{"at_step": 6, "changed": {"checkpoint_every": [3, 1]}}]


def test_a_resume_may_change_compile_and_a_run_from_before_the_flag_logs_nothing(tmp_path):
    argv = ["--model", "linear_gaussian", "--steps", "4", "--log-every", "2", "--iwae-k", "2"]
    out = tmp_path / "run"
    assert run([*argv, "--compile", "off"], out) == 0
    assert json.loads((out / "config.json").read_text())["train"]["compile"] == "off"
    assert run([*argv[:3], "6", *argv[4:]], out, "--resume") == 0  # --compile auto, the default
    config = json.loads((out / "config.json").read_text())
    assert config["resumed"] == [{"at_step": 4, "changed": {"compile": ["off", "auto"]}}]
    del config["train"]["compile"], config["resumed"]  # as a version before --compile wrote it
    (out / "config.json").write_text(json.dumps(config))
    assert run([*argv[:3], "8", *argv[4:]], out, "--resume") == 0
    assert "resumed" not in json.loads((out / "config.json").read_text())
    assert summary(out)["compiled"] == "no"  # auto: a CPU training step is not faster compiled


@pytest.mark.slow
@pytest.mark.skipif(compiler_missing("cpu") is not None, reason="no C++ compiler for inductor here")
def test_a_compiled_run_gives_the_eager_runs_numbers(tmp_path):
    argv = ["--model", "linear_gaussian", "--steps", "6", "--log-every", "3", "--iwae-k", "4"]
    assert run([*argv, "--compile", "off"], tmp_path / "eager") == 0
    try:
        assert run([*argv, "--compile", "on"], tmp_path / "compiled") == 0
    finally:
        set_compiled_likelihoods(False)
    eager, compiled = summary(tmp_path / "eager"), summary(tmp_path / "compiled")
    assert compiled.pop("compiled") == "training and evaluation" and eager.pop("compiled") == "no"
    assert compiled.keys() == eager.keys()
    for key, value in eager.items():
        if isinstance(value, float) and key not in TIMING_KEYS:
            assert compiled[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
