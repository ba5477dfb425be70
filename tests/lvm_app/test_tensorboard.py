"""TensorBoard event files of a run, read back with TensorBoard's own reader."""
import csv
import sys

import pytest
from helpers import run_cli

from inference.training.tensorboard_log import ENABLE_HINT, TensorBoardLog

pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402


def events(directory) -> EventAccumulator:
    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def curve(accumulator, tag) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_a_run_writes_its_metrics_plots_and_settings_and_a_resume_continues_the_curves(tmp_path):
    out = tmp_path / "run"
    common = ("--model", "vae", "--dataset", "digits", "--log-every", "25", "--checkpoint-every", "50",
              "--eval", "quick", "--out", out)
    assert run_cli(*common, "--steps", "100").returncode == 0
    resumed = run_cli(*common, "--steps", "150", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    accumulator = events(out / "tensorboard")
    for column in ("loss", "grad_norm"):
        expected = [(int(row["step"]), float(row[column])) for row in rows]
        got = curve(accumulator, column)
        assert [step for step, _ in got] == [25, 50, 75, 100, 125, 150]  # once each, across the resume
        assert got == [(step, pytest.approx(value, rel=1e-6)) for step, value in expected]
    assert set(accumulator.Tags()["images"]) == {path.stem for path in out.glob("*.png")}
    assert curve(accumulator, "summary/test_elbo")[-1][0] == 150
    start = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["run/model"].string_value == "vae" and hparams["train/log_every"].number_value == 25


def test_a_resume_drops_what_the_earlier_session_logged_after_its_checkpoint(tmp_path):
    """The rows metrics.csv drops on resume (logged after the checkpoint) leave the curves too."""
    first = TensorBoardLog.open(tmp_path)
    for step in (10, 20, 30):
        first.scalars({"step": step, "loss": float(step) / 10})
    first.close()
    second = TensorBoardLog.open(tmp_path, resumed_at=20)  # the checkpoint was at step 20
    for step in (30, 40):
        second.scalars({"step": step, "loss": float(step)})
    second.close()
    assert curve(events(tmp_path / "tensorboard"), "loss") == [(10, 1.0), (20, 2.0), (30, 30.0), (40, 40.0)]


def test_without_tensorboard_one_line_says_how_to_enable_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were missing
    assert TensorBoardLog.open(tmp_path) is None
    assert capsys.readouterr().err.strip() == ENABLE_HINT
    assert not (tmp_path / "tensorboard").exists()


def test_an_overwrite_starts_the_curves_again_and_a_link_is_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "run"
    out.mkdir()
    (out / "tensorboard").symlink_to(outside, target_is_directory=True)
    writer = TensorBoardLog.open(out)
    writer.scalars({"step": 1, "loss": 1.0})
    writer.close()
    assert not (out / "tensorboard").is_symlink() and list(outside.iterdir()) == []
    common = ("--model", "vae", "--dataset", "digits", "--steps", "20", "--log-every", "10", "--eval", "quick",
              "--out", out / "cli")
    assert run_cli(*common).returncode == 0
    assert run_cli(*common, "--overwrite").returncode == 0
    assert [step for step, _ in curve(events(out / "cli" / "tensorboard"), "loss")] == [10, 20]
