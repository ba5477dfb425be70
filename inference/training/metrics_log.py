"""``metrics.csv``: one row per logging step, rewritten as training goes (atomically: a link at its
name is replaced, never written through) and trimmed to the checkpoint's step on resume."""
import csv
import io
from pathlib import Path

from .run_files import write_text


class DamagedMetrics(RuntimeError):
    """metrics.csv cannot be read as the rows a run wrote (one line naming the file)."""


class MetricsLog:
    def __init__(self, path: Path, resume_from_step: int | None = None):
        self.path = Path(path)
        self.fieldnames, self.rows = None, []
        if resume_from_step is None or not self.path.exists():
            self.path.unlink(missing_ok=True)  # a fresh run's rows only (a link is removed, not followed)
            return
        # Rows logged after the checkpoint would be logged again by the resumed run: drop them.
        self.fieldnames, rows = read_rows(self.path)
        if self.fieldnames is None and resume_from_step > 0:
            raise DamagedMetrics(f"{self.path} is empty, but its run has a checkpoint at step {resume_from_step}: the "
                                 "rows logged before it are lost (move the file away to resume without them)")
        try:
            self.rows = [row for row in rows if int(float(row["step"])) <= resume_from_step]
        except (KeyError, TypeError, ValueError):
            raise DamagedMetrics(f"{self.path} has a row without a whole step number; it is not the metrics.csv "
                                 "run/svi.py writes (move it away to resume without the earlier rows)") from None
        self._write()

    def write(self, row: dict) -> None:
        if self.fieldnames is None:
            self.fieldnames = list(row)
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.fieldnames or ["step"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, text.getvalue())


def read_rows(path: Path) -> tuple[list[str] | None, list[dict]]:
    """(column names, rows as strings); a file without a ``step`` column is refused in one line."""
    try:
        with Path(path).open(newline="") as f:
            reader = csv.DictReader(f)
            fieldnames, rows = reader.fieldnames, list(reader)  # (the header is read lazily: while the file is open)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DamagedMetrics(f"cannot read {path}: {error}") from None
    if fieldnames is None:  # an empty file: no rows were logged
        return None, []
    if "step" not in fieldnames:
        raise DamagedMetrics(f"{path} has no 'step' column; it is not the metrics.csv run/svi.py writes")
    return list(fieldnames), rows


def read_metrics(path: Path) -> list[dict]:
    """The rows, every value a float (None where empty)."""
    _, rows = read_rows(path)
    try:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in rows]
    except ValueError as error:
        raise DamagedMetrics(f"{path} holds a value that is not a number ({error})") from None
