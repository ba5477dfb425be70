"""How a command presents itself: the name its messages start with (how the user invoked it), and
its argument parser, whose errors are one line."""
import argparse
import sys
from pathlib import Path


def program_name(script: str) -> str:
    """``pyro-lvm-train`` (etc.) when run as the installed console script, else ``script``
    (``run/svi.py``: the repository's shims, ``python -m lvm_app``, in-process calls)."""
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith("pyro-lvm-") else script


def seed(text: str) -> int:
    """``--seed``: an integer torch takes (zero or more), refused before anything happens otherwise."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more (torch takes no negative seed), got {value}")
    return value


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (exit 2), as every other refusal of these
    commands is: argparse's default prints the whole usage block first, burying the reason."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
