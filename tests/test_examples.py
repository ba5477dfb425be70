"""Every script in examples/ runs, as Pyro's tests/test_examples.py does for its own: a short
version of each, and a test that fails when an example is not listed here."""
import os
import subprocess
import sys

import pytest
from conftest import ROOT

EXAMPLES = {
    "svi_library_model.py": ["--steps", "30"],
    "flow_guide_on_your_model.py": ["--steps", "30"],
    "estimators_on_your_model.py": ["--ais-steps", "30"],
    "nuts_vae_posterior.py": ["--steps", "20", "--samples", "10"],
    "autoguide_mfcvae.py": ["--steps", "5"],
    "prior_samples.py": [],
    "save_and_restore.py": ["--steps", "30"],
}


def test_every_example_is_listed():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / name), *EXAMPLES[name]], capture_output=True,
                            text=True, cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip(), "an example says what it found"
