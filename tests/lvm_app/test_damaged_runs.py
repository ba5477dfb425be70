"""A damaged file in a run directory gets one line naming it and exit 1, from every command that
reads the run (``--resume``, run/gap.py), never a traceback; and a run that stopped before its
first checkpoint (no training work to lose) starts again from step 0 with ``--resume``."""
import json
import shutil

import pytest
import torch
from helpers import run_cli

from lvm_app import cli, gap

TINY = ["--model", "linear_gaussian", "--no-progress", "--iwae-k", "2", "--log-every", "1"]
TINY_GAP = ["--num-points", "3", "--ais-steps", "3", "--ais-chains", "2", "--ais-leapfrog", "2", "--bdmc-points", "0",
            "--convergence-points", "0", "--iwae-k", "3", "--elbo-samples", "3", "--local-steps", "3", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    result = run_cli(*TINY, "--steps", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def edit_json(path, change):
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


DAMAGES = {
    "checkpoint with other keys": ("checkpoint.pt", lambda p: torch.save({"weights": torch.zeros(2)}, p)),
    "truncated checkpoint": ("checkpoint.pt", lambda p: p.write_bytes(p.read_bytes()[:100])),
    "config.json not JSON": ("config.json", lambda p: p.write_text("{not json")),
    "config.json without model_config": ("config.json", lambda p: edit_json(p, lambda c: c.pop("model_config"))),
    "a wrong-typed value": ("config.json", lambda p: edit_json(p, lambda c: c["model_config"].update(latent_dim="two"))),
    "a refused value": ("config.json", lambda p: edit_json(p, lambda c: c["model_config"].update(latent_dim=0))),
    "empty metrics.csv": ("metrics.csv", lambda p: p.write_text("")),
    "metrics.csv without a step column": ("metrics.csv", lambda p: p.write_text("loss,grad_norm\n1.0,2.0\n")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_run_file_is_named_in_one_line(damage, trained, tmp_path, capsys):
    name, spoil = DAMAGES[damage]
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    spoil(run / name)
    commands = {"run/svi.py": lambda: cli.main([*TINY, "--steps", "4", "--out", str(run), "--resume"])}
    if name != "metrics.csv":  # the gap report reads the configuration and the checkpoint
        commands["run/gap.py"] = lambda: gap.main(["--checkpoint", str(run), *TINY_GAP])
    for prog, command in commands.items():
        assert command() == 1, prog
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert "Traceback" not in err and last.startswith(f"{prog}: error: ") and name in last, (prog, last)


def test_a_run_stopped_before_its_first_checkpoint_starts_again_with_resume(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "checkpoint.pt").unlink()  # killed before the first checkpoint: set-up written, no training kept
    (run / "summary.json").unlink()
    plain = run_cli(*TINY, "--steps", "3", "--out", run)
    assert plain.returncode == 2 and "--resume" in plain.stderr
    resumed = run_cli(*TINY, "--steps", "3", "--out", run, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "starting from step 0" in resumed.stderr
    assert json.loads((run / "summary.json").read_text())["train_steps"] == 3
