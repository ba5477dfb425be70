"""--device on every command (lvm_app/device.py): run/probe.py evaluates on an explicit --device cpu;
a CUDA device asked for where there is none, or a device that is not one of the choices, exits 2
with one line before anything is touched; the atlas checks the flag and hands it to every stage."""
import json

import pytest
import torch
from speech_fixtures import write_tiny_fsdd

from lvm_app import cli, gap, gap_atlas
from lvm_app import probe as probe_cli
from lvm_app.atlas_entries import ENTRIES
from lvm_app.device import UsageError, resolve_device

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
CPC = ["--model", "cpc", "--steps", "2", "--log-every", "1", "--width", "8", "--context-dim", "8",
       "--prediction-steps", "4", "--window", "1920", "--batch-size", "4", "--eval-batches", "1",
       "--probe-iterations", "5", "--baselines", "", "--no-progress"]


@pytest.fixture(scope="module")
def cpc_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpc")
    assert cli.main([*CPC, "--data-dir", str(write_tiny_fsdd(root / "data")), "--out", str(root / "run"),
                     "--device", "cpu"]) == 0
    return root / "run"


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_probe_on_an_explicit_cpu(cpc_run, one_thread):
    assert probe_cli.main(["--run", str(cpc_run), "--device", "cpu", "--baselines", "mfcc", "--no-progress"]) == 0
    summary = json.loads((cpc_run / "summary.json").read_text())
    assert summary["evaluated_by"] == "run/probe.py" and 0 <= summary["baseline_mfcc_speaker_acc"] <= 1


@NO_CUDA
@pytest.mark.parametrize("device, message", [("cuda", "this machine has no CUDA device; use --device cpu"),
                                             ("cuda:1", "no CUDA device"), ("tpu", "choose from auto, cpu, cuda")])
def test_probe_refuses_a_device_it_cannot_use_before_touching_the_run(cpc_run, capsys, device, message):
    files = {path.name: path.stat().st_mtime_ns for path in cpc_run.iterdir()}
    assert probe_cli.main(["--run", str(cpc_run), "--device", device, "--no-progress"]) == 2
    error = one_line_error(capsys)
    assert error.startswith("run/probe.py: error: --device ") and message in error
    assert {path.name: path.stat().st_mtime_ns for path in cpc_run.iterdir()} == files  # not even locked


@NO_CUDA
def test_train_and_gap_refuse_cuda_here_with_one_line(tmp_path, capsys):
    assert cli.main(["--model", "vae", "--steps", "1", "--out", str(tmp_path / "run"), "--device", "cuda"]) == 2
    assert "no CUDA device" in one_line_error(capsys) and not (tmp_path / "run").exists()
    # a name torch.device would take but the command does not offer is bad usage too (it was exit 1)
    assert cli.main(["--model", "vae", "--steps", "1", "--out", str(tmp_path / "run"), "--device", "meta"]) == 2
    assert "choose from auto, cpu, cuda or cuda:N" in one_line_error(capsys)
    assert gap.main(["--checkpoint", str(tmp_path / "no-run"), "--device", "cuda:0"]) == 2
    assert "no CUDA device" in one_line_error(capsys)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr("lvm_app.device.cuda_devices", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UsageError, match="only 2 CUDA devices"):
        resolve_device("cuda:2")
    monkeypatch.setattr("lvm_app.device.cuda_devices", lambda: 0)
    assert resolve_device("auto") == torch.device("cpu")


def atlas_commands(tmp_path, monkeypatch, *flags) -> list[list[str]]:
    """The stage commands the atlas would run for its first entry (nothing is run)."""
    args = gap_atlas.build_parser().parse_args(["--out", str(tmp_path), "--tiny", *flags])
    stages = gap_atlas.Stages(args, tmp_path)
    commands = []
    monkeypatch.setattr(stages, "_run", lambda entry, stage, command: commands.append(command) or True)
    stages.entry(ENTRIES[0])
    return commands


def test_the_atlas_hands_its_device_to_every_stage(tmp_path, monkeypatch):
    commands = atlas_commands(tmp_path, monkeypatch, "--device", "cpu")
    assert [c[0] for c in commands] == ["run/svi.py", "run/gap.py", "run/gap.py"]
    for command in commands:
        assert command[command.index("--device") + 1] == "cpu"
    assert not any("--device" in c for c in atlas_commands(tmp_path, monkeypatch))  # default: each stage's own


@NO_CUDA
def test_the_atlas_refuses_cuda_here_before_any_stage(tmp_path, capsys):
    assert gap_atlas.main(["--device", "cuda", "--out", str(tmp_path / "atlas"), "--tiny"]) == 2
    assert one_line_error(capsys) == "run/gap_atlas.py: error: --device cuda: this machine has no CUDA device; use " \
                                     "--device cpu"
    assert not (tmp_path / "atlas").exists()
