"""docs/results/reproducibility.md: every command in it parses, without running anything.

Every inline code span (and fenced code line) that starts with ``python run/`` is split on
`` && `` into commands; each command is ``shlex.split`` and handed to its script's own parser:
``lvm_app.cli.parse`` for run/svi.py (model, data set, guide and every setting are checked there
before any data are read), the ``build_parser()`` of lvm_app.gap, lvm_app.probe and
lvm_app.gap_atlas for run/gap.py, run/probe.py and run/gap_atlas.py, and for any other script
the ``build_parser()`` of the script itself, imported by path. A script without one cannot be
checked, and fails. The table must also hold a command for each of the five systems and a commit
on every row ("—" only on a row whose figure is still being measured).
"""
import importlib.util
import re
import shlex
import shutil
import subprocess

import pytest
from conftest import ROOT

PAGE = ROOT / "docs" / "results" / "reproducibility.md"
SYSTEMS = {"vae", "compile", "lfm", "mfcvae", "cpc"}
PLACEHOLDER_COMMIT = "—"
CODE_SPAN = re.compile(r"`([^`]+)`")


class CommandRefused(Exception):
    """A documented command that does not parse, or one the test cannot check."""


def page_text() -> str:
    return PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""


def code_snippets(text: str) -> list[str]:
    """The inline code spans outside fenced blocks, and every line inside them."""
    snippets, prose, fenced = [], [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            snippets.append(line.strip())
        else:
            prose.append(line)
    return CODE_SPAN.findall("\n".join(prose)) + snippets


def documented_commands(text: str) -> list[str]:
    """Each command of each snippet that starts with ``python run/``, in the order written."""
    commands = []
    for snippet in code_snippets(text):
        if snippet.strip().startswith("python run/"):
            commands += [part.strip() for part in snippet.split(" && ") if part.strip()]
    return commands


def _parser_of_script(script: str):
    """``parse(argv)`` for a script of run/ without a parser in lvm_app: its own ``build_parser``."""
    path = ROOT / script
    if not path.is_file():
        raise CommandRefused(f"{script}: no such script in the repository")
    spec = importlib.util.spec_from_file_location(f"_documented_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the scripts run their work only under __main__
    if not hasattr(module, "build_parser"):
        raise CommandRefused(f"{script}: the test does not know how to parse it (it has no build_parser())")
    return lambda argv: module.build_parser().parse_args(argv)


def parser_for(script: str):
    if script == "run/svi.py":
        from lvm_app import cli

        return cli.parse
    if script in ("run/gap.py", "run/probe.py", "run/gap_atlas.py"):
        from lvm_app import gap, gap_atlas, probe

        module = {"run/gap.py": gap, "run/probe.py": probe, "run/gap_atlas.py": gap_atlas}[script]
        return lambda argv: module.build_parser().parse_args(argv)
    return _parser_of_script(script)


def check_command(command: str) -> None:
    """Parse one ``python run/<script>.py ...`` command; CommandRefused names it if it does not."""
    try:
        argv = shlex.split(command)
    except ValueError as error:
        raise CommandRefused(f"{command!r}: not a shell command ({error})") from None
    if len(argv) < 2 or argv[0] != "python" or not argv[1].startswith("run/"):
        raise CommandRefused(f"{command!r}: the test does not know how to parse it (not 'python run/<script>')")
    script, args = argv[1], argv[2:]
    try:
        parse = parser_for(script)
    except CommandRefused as refusal:
        raise CommandRefused(f"{command!r}: {refusal}") from None
    try:
        parse(args)
    except SystemExit as exit_:
        raise CommandRefused(f"{command!r}: {script} refuses its arguments (exit {exit_.code}; "
                             "its message is on stderr above)") from None


def split_row(line: str) -> list[str]:
    """The cells of a table row; a ``|`` inside a code span does not split."""
    cells, cell, in_code = [], "", False
    for char in line.strip().strip("|"):
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += char
    return cells + [cell.strip()]


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the page's table (the one whose first column is the headline)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and "headline" in split_row(line)[0]:
            header, rows = split_row(line), []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(split_row(row))
            return header, rows
    return [], []


COMMANDS = documented_commands(page_text())


@pytest.mark.parametrize("command", COMMANDS, ids=COMMANDS)
def test_every_command_of_the_page_parses(command):
    try:
        check_command(command)
    except CommandRefused as refusal:
        pytest.fail(f"docs/results/reproducibility.md: {refusal}", pytrace=False)


@pytest.mark.parametrize("command, reason", [
    ("python run/svi.py --model nosuch", "refuses its arguments"),
    ("python run/svi.py --model vae --dataset nosuch", "refuses its arguments"),
    ("python run/svi.py --model vae --steps 0", "refuses its arguments"),
    ("python run/gap.py --checkpoint runs/x --no-such-flag", "refuses its arguments"),
    ("python run/gap_atlas.py --no-such-flag", "refuses its arguments"),
    ("python run/probe.py --run runs/x --no-such-flag", "refuses its arguments"),
    ("python run/bench_ais.py --points 5", "does not know how to parse"),
    ("python run/bench.py --threads 1 --no-such-flag", "refuses its arguments"),
    ("python run/no_such_script.py", "no such script"),
])
def test_a_broken_command_fails_the_check(command, reason):
    with pytest.raises(CommandRefused, match=reason) as refusal:
        check_command(command)
    assert command in str(refusal.value)  # the failure names the command


def test_the_table_has_a_command_for_every_system():
    header, rows = table(page_text())
    assert header and rows, f"{PAGE} has no table of headlines"
    command_column = next(i for i, name in enumerate(header) if name.startswith("command"))
    models = set()
    for row in rows:
        for command in documented_commands(row[command_column]):
            argv = shlex.split(command)
            if argv[1] == "run/svi.py" and "--model" in argv:
                models.add(argv[argv.index("--model") + 1])
    assert SYSTEMS <= models, f"no run/svi.py command in the table for: {', '.join(sorted(SYSTEMS - models))}"


def test_every_row_names_its_commit():
    header, rows = table(page_text())
    assert header and rows, f"{PAGE} has no table of headlines"
    ours = next(i for i, name in enumerate(header) if name.startswith("ours"))
    commit = next(i for i, name in enumerate(header) if name.startswith("commit"))
    hashes = set()
    for row in rows:
        assert len(row) == len(header), f"row with {len(row)} cells, the header has {len(header)}: {row[0]}"
        cell = row[commit]
        assert cell, f"no commit on the row {row[0]!r}"
        if cell == PLACEHOLDER_COMMIT:
            assert "being measured" in row[ours], f"'—' for a commit on a measured row: {row[0]!r}"
            continue
        found = re.findall(r"\b[0-9a-f]{7,40}\b", cell)
        assert found, f"no commit hash on the row {row[0]!r}: {cell!r}"
        hashes.update(found)
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the hashes cannot be looked up")
    for sha in sorted(hashes):
        result = subprocess.run([git, "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{sha} is not a commit of this repository"
