"""The command line of importance-weighted training and semi-amortised guides (run/svi.py
--objective/--particles/--gradient, --refine/--refine-lr/--refine-mode), their evaluation, the
gap report of a refined run (L[q] before and after refinement) and the atlas's refined rows.
In-process (``lvm_app.cli.main``, ``lvm_app.gap.main``) on the embedded digits: seconds."""
import json

import pytest
import torch

from lvm_app import cli, gap
from lvm_app.atlas_entries import ENTRIES, REFINED
from lvm_app.atlas_report import write_report

TINY_EVAL = ["--iwae-k", "5", "--eval-points", "20", "--train-eval-points", "20"]
TINY_GAP = ["--num-points", "20", "--ais-steps", "5", "--ais-chains", "2", "--ais-leapfrog", "2", "--bdmc-points", "0",
            "--convergence-points", "0", "--iwae-k", "20", "--elbo-samples", "1000", "--local-steps", "5", "--threads",
            "1", "--no-progress"]


def train(tmp_path, *flags, name="run", steps="8") -> int:
    return cli.main(["--model", "vae", "--steps", steps, "--log-every", "4", *TINY_EVAL, *flags,
                     "--out", str(tmp_path / name), "--no-progress"])


@pytest.mark.parametrize("flags, message", [
    (["--gradient", "dreg"], "--gradient dreg needs --objective iwae"),
    (["--particles", "5"], "--particles 5 applies to --objective iwae only"),
    (["--objective", "iwae"], "--objective iwae needs --particles K"),
    (["--refine-lr", "0.01"], "--refine-lr applies only with --refine K"),
    (["--refine-mode", "full"], "--refine-mode applies only with --refine K"),
    (["--objective", "iwae", "--particles", "5", "--gradient", "dreg", "--refine", "3", "--refine-mode", "full"],
     "--gradient dreg with --refine-mode full"),
    (["--refine-lr", "0"], "--refine-lr must be positive"),
    (["--objective", "renyi"], "invalid choice"),
    (["--guide", "planar", "--objective", "iwae", "--particles", "3", "--gradient", "dreg"],
     "--gradient dreg does not apply to --guide planar"),
    (["--local", "--refine", "3"], "--refine does not apply to --local"),
])
def test_bad_combinations_exit_2_before_anything_is_written(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train(tmp_path, *flags)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()[-1]) > 0
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags", [
    ["--objective", "iwae", "--particles", "4"],
    ["--objective", "iwae", "--particles", "4", "--gradient", "dreg", "--guide", "realnvp"],
    ["--objective", "iwae", "--particles", "3", "--gradient", "dreg", "--guide", "auxflow", "--kl-warmup-steps", "4"],
    ["--refine", "2", "--refine-mode", "full", "--guide", "planar"],
])
def test_iwae_and_refined_runs_train_and_evaluate(flags, tmp_path):
    assert train(tmp_path, *flags) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_elbo"] <= summary["test_iwae"] < 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())["settings"]
    assert config["objective"] == ("iwae" if "iwae" in flags else "elbo")


def test_eval_only_refinement_trains_the_plain_run_and_reports_both(tmp_path):
    assert train(tmp_path, name="plain") == 0
    assert train(tmp_path, "--refine", "20", "--refine-lr", "0.002", "--refine-mode", "eval", name="refined") == 0
    plain = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)["modules"]
    refined = torch.load(tmp_path / "refined" / "checkpoint.pt", weights_only=True)["modules"]
    assert plain.keys() == refined.keys()  # the checkpoint holds the plain guide: interchangeable
    assert all(torch.equal(plain[m][k], refined[m][k]) for m in plain for k in plain[m])  # the same training
    a = json.loads((tmp_path / "plain" / "summary.json").read_text())
    b = json.loads((tmp_path / "refined" / "summary.json").read_text())
    assert b["test_elbo_unrefined"] == pytest.approx(a["test_elbo"], abs=5 * a["test_elbo_se"])
    for key in ("train_elbo_unrefined", "test_iwae_unrefined", "test_elbo_refinement_gain"):
        assert key in b
    assert b["refine_steps"] == 20 and b["refine_mode"] == "eval"


def test_gap_report_of_a_refined_run_has_l_q_before_and_after(tmp_path, capsys):
    # 300 steps: a posterior worth refining towards (after a few steps it is nearly the prior)
    assert train(tmp_path, "--refine", "30", "--refine-lr", "0.01", "--refine-mode", "eval", steps="300") == 0
    out = tmp_path / "gap"
    assert gap.main(["--checkpoint", str(tmp_path / "run"), "--split", "test", "--out", str(out), *TINY_GAP]) == 0
    report = json.loads((out / "gap.json").read_text())
    for key in ("elbo_amortised_unrefined", "iwae_unrefined", "amortisation_gap_unrefined", "refinement_gain"):
        assert report[key] is not None and report[f"{key}_mc_se"] >= 0, key
    assert report["refinement"]["steps"] == 30 and len(report["refinement"]["elbo_estimate_per_step"]) == 30
    assert report["elbo_amortised"] >= report["elbo_amortised_unrefined"]  # refinement did not lower L[q]
    assert report["amortisation_gap"] == pytest.approx(report["elbo_local"] - report["elbo_amortised"])
    assert report["amortisation_gap_unrefined"] - report["amortisation_gap"] == pytest.approx(report["refinement_gain"])
    assert report["train_refine"] == 30 and report["train_refine_mode"] == "eval"
    md = (out / "gap.md").read_text()
    assert "ffg (refined 30 steps, mode eval)" in md and "| ffg, before refinement |" in md

    # the atlas: a refined entry's row is after refinement, and its own table has both
    entry = REFINED[0]
    atlas = tmp_path / "atlas"
    (atlas / entry.name / "gap-test").mkdir(parents=True)
    (atlas / entry.name / "gap-test" / "gap.json").write_text((out / "gap.json").read_text())
    write_report(atlas, [entry], None)
    row = json.loads((atlas / "atlas.json").read_text())["rows"][0]
    assert row["elbo_amortised"] == report["elbo_amortised"]
    assert row["elbo_amortised_unrefined"] == report["elbo_amortised_unrefined"]
    table = (atlas / "atlas.md").read_text()
    assert f"| {entry.label} | test | 20 | {report['elbo_amortised_unrefined']:.2f} | {report['elbo_amortised']:.2f} |" in table


def test_the_atlas_keeps_its_entries_and_adds_the_refined_ones():
    names = [e.name for e in ENTRIES]
    assert names[:4] == ["vae-ffg", "vae-planar", "vae-realnvp", "vae-auxflow"]
    assert [e.name for e in REFINED] == ["vae-refine100-eval-ffg", "vae-refine5-detach-ffg"]
    for entry in REFINED:
        assert "--refine" in entry.train_args and "--refine" in entry.tiny_train_args
        assert set(ENTRIES[0].train_args) <= set(entry.train_args)  # the plain ffg's budget, plus refinement


def test_gap_report_refines_a_plain_run_when_asked(tmp_path, capsys):
    assert train(tmp_path, steps="300") == 0
    out = tmp_path / "gap"
    argv = ["--checkpoint", str(tmp_path / "run"), "--split", "test", "--out", str(out), *TINY_GAP]
    assert gap.main([*argv, "--refine", "30", "--refine-lr", "0.01"]) == 0
    report = json.loads((out / "gap.json").read_text())
    assert report["evaluation_refine"] == {"steps": 30, "lr": 0.01} and report["train_refine"] == 0
    assert report["elbo_amortised"] >= report["elbo_amortised_unrefined"]
    assert "evaluated refined by 30 steps of 0.01" in (out / "gap.md").read_text()
    with pytest.raises(SystemExit) as stop:
        gap.main([*argv, "--refine", "0"])
    assert stop.value.code == 2 and "--refine must be at least 1" in capsys.readouterr().err
    assert gap.main([*argv, "--refine-lr", "0.01"]) == 2  # the run did not refine: --refine K is needed
    assert "--refine-lr needs --refine K" in capsys.readouterr().err
