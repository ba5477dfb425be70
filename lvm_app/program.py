"""The name a command's messages start with: how the user invoked it."""
import sys
from pathlib import Path


def program_name(script: str) -> str:
    """``pyro-lvm-train`` (etc.) when run as the installed console script, else ``script``
    (``run/svi.py``: the repository's shims, ``python -m lvm_app``, in-process calls)."""
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith("pyro-lvm-") else script
