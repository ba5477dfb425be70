"""The commands' entry points (run/*.py, the installed pyro-lvm-* scripts, ``python -m lvm_app``).
Each imports its command only when called: loading torch takes seconds, and a Ctrl-C in them ends
with one line and exit 130, as it does at any other time, not with a traceback."""
import importlib
import signal
import sys

from lvm_app.command import program_name


def _run(module: str, script: str) -> int:
    """A Ctrl-C while the command's modules load is held until they have loaded: a
    KeyboardInterrupt raised inside numpy's or scipy's own imports can leave them half
    initialised, and the next import then fails with a RecursionError instead of stopping."""
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:  # (another handler was installed meanwhile)
        interrupted.append(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
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
