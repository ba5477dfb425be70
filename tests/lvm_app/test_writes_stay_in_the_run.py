"""A command writes only inside its run directory, atomically: every file of a run directory (and
its lock) turned into a link to a file outside it, every command run against it, and the files
outside are untouched; a write that fails (a full disk) leaves the previous file and one line."""
import errno
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from helpers import run_cli

TINY_VAE = ["--model", "vae", "--no-progress", "--iwae-k", "2", "--eval-points", "10", "--train-eval-points", "10",
            "--log-every", "1"]
TINY_GAP = ["--num-points", "4", "--ais-steps", "5", "--ais-chains", "2", "--ais-leapfrog", "2", "--bdmc-points", "0",
            "--convergence-points", "0", "--iwae-k", "5", "--elbo-samples", "5", "--local-steps", "5", "--no-progress"]


def run_command(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "run" / script), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def link_out(run, names, outside):
    """Each file ``names`` of ``run`` replaced by a link to a copy outside it; the copies' bytes."""
    outside.mkdir(exist_ok=True)
    kept = {}
    for name in names:
        target = outside / name
        filler = b'{"outside": "do not touch"}\n' if name.endswith(".json") else b"outside: do not touch\n"
        target.write_bytes((run / name).read_bytes() if (run / name).exists() else filler)
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(target)
        kept[target] = target.read_bytes()
    return kept


def assert_untouched(kept: dict, run, names):
    for target, content in kept.items():
        assert target.read_bytes() == content, f"{target} was written through a link"
    for name in names:
        assert not (run / name).is_symlink(), f"{name} is still a link: it should have been replaced"


@pytest.mark.slow
def test_every_command_replaces_links_and_never_writes_through_them(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    first = run_cli(*TINY_VAE, "--steps", "2", "--out", run)
    assert first.returncode == 0, first.stderr

    names = [".lock", "config.json", "metrics.csv", "summary.json", "training_curve.png", "samples.png"]
    kept = link_out(run, names, outside)
    resumed = run_cli(*TINY_VAE, "--steps", "4", "--out", run, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_untouched(kept, run, names)
    assert json.loads((run / "summary.json").read_text())["train_steps"] == 4

    gap_names = ["gap.json", "gap.md", ".lock"]
    kept = link_out(run, gap_names, tmp_path / "outside-gap")
    report = run_command("gap.py", "--checkpoint", run, *TINY_GAP)
    assert report.returncode == 0, report.stderr
    assert_untouched(kept, run, ["gap.json", "gap.md"])

    atlas = tmp_path / "atlas"
    (atlas / "vae-ffg" / "gap-train").mkdir(parents=True)
    (atlas / "vae-ffg" / "gap-train" / "gap.json").write_text((run / "gap.json").read_text())
    atlas_names = ["atlas.json", "atlas.md", "atlas.png"]
    kept = link_out(atlas, atlas_names, tmp_path / "outside-atlas")
    rebuilt = run_command("gap_atlas.py", "--out", atlas, "--only", "vae-ffg", "--report-only")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert_untouched(kept, atlas, atlas_names)


def test_a_lock_that_is_a_link_is_replaced_and_its_target_kept(tmp_path):
    from lvm_app.run_lock import RunLock

    outside = tmp_path / "precious.txt"
    outside.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(outside)
    with RunLock(run):
        assert not (run / ".lock").is_symlink() and (run / ".lock").read_text() == str(os.getpid())
    assert outside.read_text() == "precious"


def test_a_full_disk_keeps_the_previous_report_and_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """run/gap.py's report is written last, after all its work: a failed write must not lose the previous one."""
    from inference.training import run_files
    from lvm_app import gap

    run = tmp_path / "run"
    trained = run_cli("--model", "linear_gaussian", "--steps", "20", "--out", run, "--no-progress", "--iwae-k", "5")
    assert trained.returncode == 0, trained.stderr
    (run / "gap.json").write_text('{"previous": true}\n')

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_files.os, "fsync", full_disk)
    assert gap.main(["--checkpoint", str(run), *TINY_GAP]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("run/gap.py: error: cannot write") and "No space left on device" in err[-1]
    assert json.loads((run / "gap.json").read_text()) == {"previous": True}
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
