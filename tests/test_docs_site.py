"""The documentation site builds with warnings as errors: a broken link, a missing API reference
or a page left out of the navigation fails here (mkdocs.yml, docs/site_hooks.py)."""
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT


def build(site_dir, config=ROOT / "mkdocs.yml") -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site_dir)], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocstrings", reason='the docs extra is not installed (pip install -e ".[docs]")')
    site_dir = tmp_path_factory.mktemp("site")
    result = build(site_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return site_dir


def test_the_site_holds_the_readme_the_contracts_the_results_and_the_api(site):
    readme = (site / "readme" / "index.html").read_text()
    assert "Using the library in your own Pyro program" in readme
    assert 'href="../command_line/"' in readme or 'href="command_line/"' in readme  # docs/ links made site links
    api = (site / "api" / "inference" / "index.html").read_text()
    for name in ("evaluate_importance", "gap_report", "IwaeLoss", "AISSettings"):  # rendered from the docstrings
        assert f'id="inference.{name}"' in api, name
    for page in ("command_line", "estimators", "results/gap", "api/pyro_models", "api/guides", "changelog"):
        assert (site / page / "index.html").exists(), page


def test_a_broken_link_fails_the_build(site, tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    for page in ("README.md", "CHANGELOG.md"):  # the hooks make them pages from the copy's root
        shutil.copy(ROOT / page, tmp_path / page)
    (docs / "layout.md").write_text((docs / "layout.md").read_text() + "\nSee [nowhere](no_such_page.md).\n")
    config = (ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    config = config.replace("  - docs/site_hooks.py", f"  - {docs / 'site_hooks.py'}")
    (tmp_path / "mkdocs.yml").write_text(config)
    result = build(tmp_path / "site", tmp_path / "mkdocs.yml")
    assert result.returncode != 0 and "no_such_page.md" in result.stderr
