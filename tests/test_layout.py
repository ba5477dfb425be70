"""The layout the README describes: one folder per paper under pyro_models/, whose generative
program imports nothing but Pyro, torch and the model's own pieces; the application (CLI,
registry, gap report, atlas) in lvm_app/; every run/ script answers --help."""
import ast
import subprocess
import sys

import pytest

from conftest import ROOT

PAPERS = ("vae", "linear_gaussian", "mfcvae", "compile", "lfm", "cpc")
# What a generative program (and the networks and guide a paper brings) may import: Pyro, torch,
# the standard library's pure helpers, the shared model pieces, and its own package.
ALLOWED_ROOTS = {"pyro", "torch", "math", "dataclasses", "collections", "typing", "itertools", "functools"}
ALLOWED_MODULES = {"pyro_models.core", "pyro_models.networks", "pyro_models.likelihoods"}
PROGRAM_FILES = [ROOT / "pyro_models" / paper / "model.py" for paper in PAPERS] + [
    ROOT / "pyro_models" / name for name in ("core.py", "networks.py", "likelihoods.py", "ppca.py")] + [
    ROOT / "pyro_models" / "mfcvae" / "ladder.py", ROOT / "pyro_models" / "mfcvae" / "conv_ladder.py",
    ROOT / "pyro_models" / "compile" / "guide.py"]


def imports_of(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or "")


@pytest.mark.parametrize("path", PROGRAM_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_generative_programs_import_only_pyro_torch_and_their_own_pieces(path):
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for module in imports_of(path):
        if module.startswith("."):
            continue  # the paper's own package
        if module.split(".")[0] in ALLOWED_ROOTS or module in ALLOWED_MODULES or module.startswith(package + "."):
            continue
        pytest.fail(f"{path.relative_to(ROOT)} imports {module}: a generative program imports only Pyro, torch and "
                    "its own networks (runners, estimators, data and file I/O live in experiment.py and lvm_app/)")


@pytest.mark.parametrize("paper", PAPERS)
def test_each_paper_has_its_program_and_its_glue_side_by_side(paper):
    folder = ROOT / "pyro_models" / paper
    assert (folder / "model.py").exists() and (folder / "experiment.py").exists()


def test_the_application_package_is_not_imported_by_the_library_core():
    for package in ("guides", "inference"):
        for path in (ROOT / package).glob("*.py"):
            assert not any(m.split(".")[0] == "lvm_app" for m in imports_of(path)), path


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "run").glob("*.py")))
def test_every_run_script_answers_help(script):
    result = subprocess.run([sys.executable, str(ROOT / "run" / script), "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0 and "usage" in result.stdout.lower(), result.stderr
