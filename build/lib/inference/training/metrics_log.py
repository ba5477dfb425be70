"""``metrics.csv``: one row per logging step, appended as training goes, trimmed on resume."""
import csv
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path, resume_from_step: int | None = None):
        self.path = Path(path)
        self.fieldnames = None
        if resume_from_step is None or not self.path.exists():
            self.path.unlink(missing_ok=True)
            return
        # Rows logged after the checkpoint would be logged again by the resumed run: drop them.
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            self.fieldnames = reader.fieldnames
            rows = [row for row in reader if int(row["step"]) <= resume_from_step]
        self._rewrite(rows)

    def _rewrite(self, rows):
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fieldnames)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        if self.fieldnames is None:
            self.fieldnames = list(row)
            self._rewrite([])
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fieldnames, extrasaction="ignore").writerow(row)


def read_metrics(path: Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in csv.DictReader(f)]
