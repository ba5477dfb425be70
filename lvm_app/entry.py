"""The commands' entry points (run/*.py, the installed pyro-lvm-* scripts, ``python -m lvm_app``).
Each imports its command only when called: loading torch takes seconds, and a Ctrl-C in them ends
with one line and exit 130, as it does at any other time, not with a traceback."""
import importlib
import sys

from lvm_app.command import program_name


def _run(module: str, script: str) -> int:
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print(f"{program_name(script)}: interrupted while starting; nothing was done", file=sys.stderr)
        return 130
    return main()


def train() -> int:
    return _run("lvm_app.cli", "run/svi.py")


def gap() -> int:
    return _run("lvm_app.gap", "run/gap.py")


def atlas() -> int:
    return _run("lvm_app.gap_atlas", "run/gap_atlas.py")


def probe() -> int:
    return _run("lvm_app.probe", "run/probe.py")
