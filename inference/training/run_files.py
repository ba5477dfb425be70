"""Writing a run's files: atomically, and never through a link.

Every file a command writes is written to a new temporary file in its own directory (created
exclusively, with a name no one else holds, so a link planted there cannot redirect it), flushed
to disk, and renamed over its name. The rename replaces a link at that name instead of following
it, so a command writes only inside its run directory; a reader never sees half a file; and a
failed write (a full disk) leaves the previous file as it was, no temporary file behind, and one
line that says which file (``WriteFailed``).
"""
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


class WriteFailed(OSError):
    """A file could not be written; the previous one, if any, is as it was."""


def replace_file(path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` with ``write(binary file)`` through a temporary file and a rename."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, (OSError, RuntimeError)):  # torch reports a full disk as a RuntimeError
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise WriteFailed(f"cannot write {path} (is the disk full?); the previous file is kept: {first}") from None
        raise
    return path


def write_text(path, text: str) -> Path:
    return replace_file(path, lambda file: file.write(text.encode()))


def write_json(path, value) -> Path:
    """``value`` as indented JSON with a final newline (summary.json, config.json, gap.json, ...)."""
    return write_text(path, json.dumps(value, indent=2) + "\n")


def save_torch(path, value) -> Path:
    """``torch.save(value)`` to ``path``."""
    import torch

    return replace_file(path, lambda file: torch.save(value, file))


def save_figure(fig, path, **savefig) -> Path:
    """A matplotlib figure as a PNG file (the format from the name, as ``savefig`` takes it)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return replace_file(path, lambda file: fig.savefig(file, format=fmt, **savefig))
