"""The layout the README describes, read from the code's imports: every arrow points one way.

Layers, bottom to top (a file may import its own layer and those below it, never one above):

0. models: pyro_models' protocol and shared pieces (core, networks, likelihoods, ppca, datasets/)
   and, in each paper folder, the generative program with its networks (PROGRAM files: they
   import only Pyro, torch and the program's own pieces) and the standalone tools it comes with
   (BELOW files: data, metrics, probes; anything but guides/, inference/ and the glue);
1. guides/: imports layer 0 only;
2. inference/: imports guides/ through the names ``guides`` exports, never its private ones;
3. experiments: pyro_models/experiment_kit/ and each paper folder's GLUE files (experiment.py,
   gap estimators, evaluation, plots);
4. the application: lvm_app/ (the command line), which nothing in the library imports.

Every file of a paper folder is classified here: a new file fails until it is given its layer.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PAPERS = ("vae", "linear_gaussian", "mfcvae", "compile", "lfm", "cpc")
PROGRAM, BELOW, GLUE = "program", "below", "glue"
PAPER_FILES = {
    "vae": {"__init__": PROGRAM, "model": PROGRAM, "experiment": GLUE},
    "linear_gaussian": {"__init__": PROGRAM, "model": PROGRAM, "data": BELOW, "experiment": GLUE},
    "mfcvae": {"__init__": PROGRAM, "model": PROGRAM, "ladder": PROGRAM, "conv_ladder": PROGRAM,
               "clustering": BELOW, "facet_use": BELOW, "experiment": GLUE, "plots": GLUE},
    "compile": {"__init__": PROGRAM, "model": PROGRAM, "guide": PROGRAM, "data": BELOW, "metrics": BELOW,
                "gap": GLUE, "experiment": GLUE},
    "lfm": {"__init__": PROGRAM, "model": PROGRAM, "data": BELOW, "baselines": GLUE, "gap": GLUE,
            "evaluation": GLUE, "plots": GLUE, "experiment": GLUE},
    "cpc": {"__init__": PROGRAM, "model": PROGRAM, "data": BELOW, "fsdd_sums": BELOW, "probes": BELOW,
            "experiment": GLUE},
}
MODELS, GUIDES, INFERENCE, EXPERIMENTS, APPLICATION = range(5)
LAYER_NAMES = ("models", "guides", "inference", "experiments", "application")
# What a generative program may import besides its own paper's program files.
PROGRAM_ROOTS = {"pyro", "torch", "math", "dataclasses", "collections", "typing", "itertools", "functools"}
PROGRAM_MODULES = {"pyro_models", "pyro_models.core", "pyro_models.networks", "pyro_models.likelihoods"}
PACKAGES = ("pyro_models", "guides", "inference", "lvm_app")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str | None = None):
    """Absolute module names (relative imports resolved) and, per ``from`` import, the names taken;
    ``module``: the file's module name (default: from its place in the repository)."""
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = ".".join(part for part in (base, node.module) if part) if node.level else node.module
            names = tuple(alias.name for alias in node.names)
            if node.level and not node.module:  # ``from . import plots``: the names are modules
                for name in names:
                    yield f"{module}.{name}", ()
            else:
                yield module, names


def paper_role(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "pyro_models" and parts[1] in PAPERS:
        return PAPER_FILES[parts[1]].get(parts[2] if len(parts) > 2 else "__init__")
    return None


def layer_of(module: str) -> int | None:
    """The layer of one of the project's modules (None: a third-party or standard module)."""
    root = module.split(".")[0]
    if root == "lvm_app":
        return APPLICATION
    if root == "inference":
        return INFERENCE
    if root == "guides":
        return GUIDES
    if root != "pyro_models":
        return None
    if module.startswith("pyro_models.experiment_kit"):
        return EXPERIMENTS
    return EXPERIMENTS if paper_role(module) == GLUE else MODELS


def library_files():
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("paper", PAPERS)
def test_every_file_of_a_paper_folder_has_its_layer(paper):
    files = {path.stem for path in (ROOT / "pyro_models" / paper).glob("*.py")}
    assert files == set(PAPER_FILES[paper]), (
        f"pyro_models/{paper}: classify {sorted(files - set(PAPER_FILES[paper]))} in tests/test_layout.py "
        f"(PAPER_FILES: program, below or glue); no longer there: {sorted(set(PAPER_FILES[paper]) - files)}")
    assert PAPER_FILES[paper]["model"] == PROGRAM and PAPER_FILES[paper]["experiment"] == GLUE


def wrong_way_imports(path: Path, module: str) -> list[str]:
    """The imports of ``path`` (module ``module``) that point up, and, in inference/, those of
    guides' private names or modules."""
    own, found = layer_of(module), []
    for target, names in imports_of(path, module):
        layer = layer_of(target)
        if layer is not None and layer > own:
            found.append(f"{target} (layer {LAYER_NAMES[layer]}, above {LAYER_NAMES[own]})")
        if own == INFERENCE and layer == GUIDES and (target != "guides" or any(n.startswith("_") for n in names)):
            found.append(f"{target}: {', '.join(names)} (inference uses the names `guides` exports)")
    return found


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_import_points_down(path):
    wrong = wrong_way_imports(path, module_name(path))
    assert not wrong, (f"{path.relative_to(ROOT)} imports {'; '.join(wrong)}: the library's arrows point down "
                       "(tests/test_layout.py says which file stands where)")


@pytest.mark.parametrize("path", [p for p in library_files() if paper_role(module_name(p)) == PROGRAM],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_generative_programs_import_only_pyro_torch_and_their_own_pieces(path):
    paper = module_name(path).split(".")[1]
    for module, _ in imports_of(path):
        if module.split(".")[0] in PROGRAM_ROOTS or module in PROGRAM_MODULES:
            continue
        if module.startswith(f"pyro_models.{paper}") and paper_role(module) == PROGRAM:
            continue
        pytest.fail(f"{path.relative_to(ROOT)} imports {module}: a generative program imports only Pyro, torch and "
                    "its own networks (data, runners, estimators and file I/O live beside it)")


@pytest.mark.parametrize("module, source, wrong", [
    ("guides.probe", "from inference.log_weights import log_weights\nfrom .flows import MIN_SCALE\n", 1),
    ("inference.probe", "from guides.flows import _base\nfrom guides import build_guide\n", 1),
    ("inference.gap.probe", "from guides import _private\nfrom ..ais import ais\n", 1),
    ("inference.gap.probe", "from ..ais import ais\nfrom . import checks\n", 0),
    ("pyro_models.vae.model", "import lvm_app.cli\nfrom pyro_models.core import setting\n", 1),
    ("pyro_models.experiment_kit.probe", "from lvm_app.registry import EXPERIMENTS\nfrom inference import ais\n", 1),
    ("pyro_models.cpc.data", "from pyro_models.cpc.experiment import window_of\n", 1),
])
def test_the_layer_rules_catch_a_wrong_way_import(module, source, wrong, tmp_path):
    """The check above fails on what it guards against (a check that cannot fail is no check)."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert len(wrong_way_imports(path, module)) == wrong, wrong_way_imports(path, module)


def literal_size(node) -> int:
    """Elements of a list/tuple/set/dict display, or characters of a string constant."""
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return len(node.elts)
    if isinstance(node, ast.Dict):
        return len(node.keys)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return len(node.value)
    return 0


def docstrings(tree) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_source_file_holds_a_data_table(path):
    """Data (checksums, tables) ship as package data files, not as Python literals."""
    tree = ast.parse(path.read_text())
    skip = docstrings(tree)
    biggest = max((literal_size(node) for node in ast.walk(tree) if id(node) not in skip), default=0)
    assert biggest <= 400, f"{path.relative_to(ROOT)} holds a literal of {biggest} elements or characters"


def test_every_data_file_in_a_package_ships_with_it():
    """A data file a package reads (the FSDD checksums) is package data, so an installed copy has it."""
    import fnmatch
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = [path for package in PACKAGES for path in (ROOT / package).rglob("*")
             if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts]
    assert any(path.name == "fsdd_sha256.txt" for path in files)
    for path in files:
        package = ".".join(path.parent.relative_to(ROOT).parts)
        patterns = declared.get(package, []) + declared.get("*", [])
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns), (
            f"{path.relative_to(ROOT)} is not package data: add it to [tool.setuptools.package-data] in pyproject.toml")


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "run").glob("*.py")))
def test_every_run_script_answers_help(script):
    result = subprocess.run([sys.executable, str(ROOT / "run" / script), "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0 and "usage" in result.stdout.lower(), result.stderr
