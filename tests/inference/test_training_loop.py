"""The runner: exact resume after an interruption, NaN detection that keeps the last checkpoint."""
import signal

import pyro
import pytest
import torch
from helpers import module_states_equal

from inference import TrainingDiverged, TrainingInterrupted, TrainSettings, train
from inference.training.checkpoint import load_checkpoint
from inference.training.metrics_log import read_metrics
from lvm_app.registry import EXPERIMENTS
from pyro_models.linear_gaussian.data import load_simulated


def setup(init_seed=0):
    """A small linear-Gaussian run built the way the CLI builds it (data order seeded by 0)."""
    experiment = EXPERIMENTS["linear_gaussian"]
    data = load_simulated()
    ctx = experiment.context(data, guide="ffg", batch_size=32)
    pyro.set_rng_seed(init_seed)
    built = experiment.build(ctx, data)
    return built, experiment.batches(ctx, data)


def settings(steps, **kw):
    return TrainSettings(**{"steps": steps, "lr": 1e-2, "log_every": 2, "checkpoint_every": 100, "progress": False, **kw})


def test_interrupted_then_resumed_run_equals_uninterrupted_run(tmp_path):
    built, batches = setup()
    train(built.objective, built.modules, batches, settings(10), tmp_path / "straight")
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")

    built, batches = setup()

    def interrupt_at_step_4(step):
        if step == 4:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does: the loop stops at the next step
        return {}

    with pytest.raises(TrainingInterrupted, match="after step 4"):
        train(built.objective, built.modules, batches, settings(10), tmp_path / "resumed", on_log=interrupt_at_step_4)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["step"] == 4

    built, batches = setup(init_seed=123)  # other initial values and RNG: everything must come from the checkpoint
    train(built.objective, built.modules, batches, settings(10), tmp_path / "resumed", resume=True)
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for name in straight["modules"]:
        assert module_states_equal(straight["modules"][name], resumed["modules"][name]), name
    rows = read_metrics(tmp_path / "resumed" / "metrics.csv")
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10]
    assert [r["loss"] for r in rows] == [r["loss"] for r in read_metrics(tmp_path / "straight" / "metrics.csv")]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    built, batches = setup()

    def objective(batch, **schedule):
        loss = built.objective(batch, **schedule)
        return float("nan") if objective.calls == 7 else loss

    def counting(batch, **schedule):
        objective.calls += 1
        return objective(batch, **schedule)

    objective.calls = 0
    with pytest.raises(TrainingDiverged, match=r"at step 7; last good checkpoint: .*\(step 5\)"):
        train(counting, built.modules, batches, TrainSettings(steps=20, checkpoint_every=5, progress=False), tmp_path)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["step"] == 5
    assert all(torch.isfinite(v).all() for state in saved["modules"].values() for v in state.values())


def test_non_finite_gradient_is_caught(tmp_path):
    built, batches = setup()

    def objective(batch, **schedule):
        loss = built.objective(batch, **schedule)
        built.model.weight.grad.fill_(float("inf"))
        return loss

    with pytest.raises(TrainingDiverged, match="gradient norm .* at step 1"):
        train(objective, built.modules, batches, settings(3), tmp_path)


def test_a_checkpoint_whose_parameters_diverge_at_once_gives_way_to_the_one_before(tmp_path):
    """The checkpoint of step 3 holds the parameters from which step 4's loss is NaN: it is not a
    good checkpoint, and the one of step 2 (kept until step 3's was confirmed) takes its place."""
    module = torch.nn.Linear(2, 1)
    calls = []

    def objective(batch):
        calls.append(1)
        loss = module(batch["x"]).sum()
        loss.backward()
        return float("nan") if len(calls) == 4 else loss.item()

    with pytest.raises(TrainingDiverged, match="checkpoint of step 3 held the parameters that gave it and was replaced"):
        train(objective, {"model": module}, lambda step: {"x": torch.ones(4, 2)}, settings(10, checkpoint_every=1),
              tmp_path)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    assert not (tmp_path / "checkpoint.previous.pt").exists()
