"""TensorBoard event files for a run, next to ``metrics.csv``: live curves while it trains.

``RUN/tensorboard/`` gets every row of metrics.csv as scalars (one tag per column, at its step),
the run's plots as images and its settings as hparams (with the summary's numbers as their
metrics), when the optional ``tensorboard`` package is installed (``pip install -e
".[tensorboard]"``); without it, one line says how to enable it. ``tensorboard --logdir runs``
lays runs side by side.

A resumed run continues the same curves: its writer starts with ``purge_step`` = the checkpoint's
step + 1, which tells TensorBoard's readers to drop what the earlier session logged after the
checkpoint (the rows metrics.csv drops too), so no step appears twice. Event files are appended
as training goes, so unlike the run's other files they are not replaced atomically: each session
creates a new file under a name of its own (host, process, time) in a directory that is never a
link (one found there is removed first), so nothing is written outside the run.
"""
import math
import sys
from pathlib import Path

ENABLE_HINT = 'TensorBoard curves: pip install -e ".[tensorboard]" (the run writes metrics.csv either way)'
DIRECTORY = "tensorboard"


def _flat(config: dict, prefix: str = "") -> dict:
    """Nested settings as one level of TensorBoard hparams (lists and None as text)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def _numbers(row: dict) -> dict:
    return {key: float(value) for key, value in row.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def remove_curves(out_dir: Path) -> None:
    """An --overwrite removes the earlier run's event files with its other files (a link: the link)."""
    directory = Path(out_dir) / DIRECTORY
    if directory.is_symlink():
        directory.unlink()
    elif directory.is_dir():
        for path in directory.glob("events.out.tfevents.*"):
            path.unlink()


class TensorBoardLog:
    """One session's writer of ``RUN/tensorboard``; ``open`` gives None without the package."""

    def __init__(self, writer):
        self.writer = writer

    @classmethod
    def open(cls, out_dir: Path, resumed_at: int | None = None, quiet: bool = False) -> "TensorBoardLog | None":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            if not quiet:
                print(ENABLE_HINT, file=sys.stderr)
            return None
        directory = Path(out_dir) / DIRECTORY
        if directory.is_symlink():
            directory.unlink()  # the link goes, never what it points to
        directory.mkdir(parents=True, exist_ok=True)
        purge = resumed_at + 1 if resumed_at is not None else None
        return cls(SummaryWriter(log_dir=str(directory), purge_step=purge, flush_secs=10))

    def scalars(self, row: dict) -> None:
        """A metrics.csv row: each number at the row's step."""
        step = int(row["step"])
        for key, value in _numbers(row).items():
            if key != "step":
                self.writer.add_scalar(key, value, step)

    def images(self, paths, step: int) -> None:
        """PNG plots, each under its file name."""
        import numpy as np
        from PIL import Image

        for path in sorted(paths):
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(Path(path).stem, pixels, step, dataformats="HWC")

    def settings(self, config: dict, summary: dict, step: int) -> None:
        """config.json as hparams, the summary's numbers as their metrics (also as scalars)."""
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"summary/{key}": value for key, value in _numbers(summary).items()}
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        for part in hparams(_flat(config), metrics):
            self.writer.file_writer.add_summary(part)

    def close(self) -> None:
        self.writer.close()
