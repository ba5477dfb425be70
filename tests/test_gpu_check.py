"""run/gpu_check.py, the one command for a GPU machine, runs end to end: here on the CPU, small
(--device cpu --tiny), so that it is not found broken on a machine lent for minutes."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_the_gpu_check_runs_through_on_the_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "run/gpu_check.py"), "--device", "cpu", "--tiny", "--models",
                           "linear_gaussian", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["same_runs"]["linear_gaussian"]["equal"]  # the same run twice on the CPU
    assert report["cuda_tests"]["files"]  # the files whose tests need CUDA were found
    assert 0 < report["vae"]["iwae_fraction_of_peak_eager"] < 1 and report["vae"]["cremer_ais_hours_eager"] > 0
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")
