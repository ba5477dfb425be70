"""run/gap_atlas.py end to end at its tiny settings: one entry per kind of estimator (AIS for
continuous latents, CompILE's discrete model, the LFM's enumeration)."""
import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT

ONLY = "vae-ffg,compile-gaussian,compile-concrete,lfm-bernoulli"


def run_atlas(*args, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "run" / "gap_atlas.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_tiny_atlas_writes_the_table_and_figure_and_continues(tmp_path, data_dir):
    out = tmp_path / "atlas"
    result = run_atlas("--tiny", "--only", ONLY, "--out", out, "--data-dir", data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads((out / "atlas.json").read_text())["rows"]
    assert sorted((r["entry"], r["split"]) for r in rows) == sorted(
        (e, s) for e in ONLY.split(",") for s in ("train", "test"))
    for r in rows:
        for key in ("approximation_gap", "amortisation_gap"):
            assert math.isfinite(r[key]) and r[f"{key}_mc_se"] >= 0 and math.isfinite(r[f"{key}_point_se"])
        top = r[r["gaps_from"]]  # log_px, or a lower bound that sits above its estimate
        assert abs(r["approximation_gap"] + r["amortisation_gap"] - (top - r["elbo_amortised"])) < 1e-9
        assert r["converged"] in (True, False, None) and isinstance(r["checks_not_passed"], list)
    methods = {r["model"]: r["log_px_method"].lower() for r in rows}
    assert "ais" in methods["vae"] and "enumerat" in methods["lfm"]
    table = (out / "atlas.md").read_text()
    assert "TINY SETTINGS" in table and "| lfm / bernoulli |" in table
    assert (out / "atlas.png").stat().st_size > 10_000
    again = run_atlas("--tiny", "--only", ONLY, "--out", out, "--data-dir", data_dir)
    assert again.returncode == 0 and " done in " not in again.stdout  # every stage's output exists: all skipped


def test_atlas_refuses_an_unknown_entry(tmp_path):
    result = run_atlas("--only", "nothing-like-this", "--out", tmp_path)
    assert result.returncode == 2 and "matches no entry" in result.stderr
