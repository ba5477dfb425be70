"""``python run/gap_atlas.py``: the amortisation gap across the library, one command.

For every (model, guide) pair of ``lvm_app/atlas_entries.py``: train a run with the stated
budget (or continue / reuse the one already in --out), then run ``run/gap.py`` on a fixed
subset of training points and one of test points. Writes atlas.json, atlas.md (the table) and
atlas.png (stacked bars of approximation and amortisation gap, training vs test subsets).

Stages are subprocesses with one torch thread each, ``--jobs`` entries at a time; a stage whose
output exists is skipped, so an interrupted atlas continues where it stopped (a stopped training
run resumes from its checkpoint). Exit status: 0 all entries done; 1 a stage failed (the others
still run; the failed stage's log is named); 2 bad flags; 130 interrupted.
"""
import argparse
import fnmatch
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from inference.training.run_files import write_json
from lvm_app.atlas_entries import ENTRIES, AtlasEntry
from lvm_app.atlas_report import write_report
from lvm_app.command import CommandParser, program_name, seed
from lvm_app.device import DEVICE_CHOICES, UsageError, resolve_device

PROG = program_name("run/gap_atlas.py")  # the prefix of every message

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "test")


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog="Entries: " + ", ".join(e.name for e in ENTRIES))
    p.add_argument("--out", default="runs/atlas", help="directory of the runs and the report (default: runs/atlas)")
    p.add_argument("--data-dir", help="data directory (default: $PYRO_MODELS_DATA, else ~/.cache/pyro_models)")
    p.add_argument("--only", default="*", help="comma-separated entry names or glob patterns (default: all)")
    p.add_argument("--jobs", type=int, default=2, help="entries run at once, one thread each (default: 2)")
    p.add_argument("--tiny", action="store_true", help="tiny budgets that only check the plumbing (tests)")
    p.add_argument("--report-only", action="store_true", help="rebuild atlas.md/png/json from the gap reports there")
    p.add_argument("--train-only", action="store_true",
                   help="train (or continue) the entries' runs and stop before their gap reports")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", help=f"{DEVICE_CHOICES}: given to every stage, run/svi.py and run/gap.py (default: "
                   "each stage's own, auto for training and cpu for the gap reports)")
    return p


def select(only: str) -> list[AtlasEntry]:
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    chosen = [e for e in ENTRIES if any(fnmatch.fnmatchcase(e.name, p) for p in patterns)]
    if not chosen:
        raise ValueError(f"--only {only!r} matches no entry; entries: {', '.join(e.name for e in ENTRIES)}")
    return chosen


class Stages:
    """Runs one entry's stages as subprocesses, logging each to a file and timing it."""

    def __init__(self, args, out: Path):
        self.args, self.out, self.lock = args, out, threading.Lock()
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.failed: list[str] = []
        self.interrupted = False

    def _run(self, entry: AtlasEntry, stage: str, command: list[str]) -> bool:
        log = self.out / entry.name / f"{stage}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.unlink(missing_ok=True)  # a new log each time; a link at its name is removed, never written through
        started = time.perf_counter()
        with os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as handle:
            code = subprocess.call([sys.executable, *command], stdout=handle, stderr=subprocess.STDOUT,
                                   cwd=ROOT, env=self.env)
        wall = time.perf_counter() - started
        self._note(entry, stage, wall, code)
        with self.lock:
            status = "done" if code == 0 else f"FAILED (exit {code}; see {log})"
            print(f"[atlas] {entry.name}: {stage} {status} in {wall:.0f} s", flush=True)
            if code == 130:
                self.interrupted = True
            elif code != 0:
                self.failed.append(f"{entry.name} {stage}: {log}")
        return code == 0

    def _note(self, entry, stage, wall, code):
        """Stage wall times accumulate in the entry's timings.json (continued stages add up)."""
        path = self.out / entry.name / "timings.json"
        with self.lock:
            timings = json.loads(path.read_text()) if path.exists() else {}
            timings[stage] = round(timings.get(stage, 0.0) + wall, 1)
            timings[f"{stage}_exit"] = code
            write_json(path, timings)

    def entry(self, entry: AtlasEntry) -> None:
        run_dir = self.out / entry.name / "run"
        # flags both stages take
        common = ["--data-dir", self.args.data_dir] if self.args.data_dir else []
        common += ["--device", self.args.device] if self.args.device else []
        if not (run_dir / "summary.json").exists():
            train = entry.tiny_train_args if self.args.tiny else entry.train_args
            command = ["run/svi.py", "--model", entry.model, "--guide", entry.guide, "--dataset", entry.dataset,
                       *common, *train, "--seed", str(self.args.seed), "--out", str(run_dir), "--no-progress"]
            if (run_dir / "checkpoint.pt").exists():
                command.append("--resume")
            elif run_dir.exists():  # started, but stopped before its first checkpoint: start again
                command.append("--overwrite")
            if self.interrupted or not self._run(entry, "train", command):
                return
        if self.args.train_only:
            return
        gap = entry.tiny_gap_args if self.args.tiny else entry.gap_args
        for split in SPLITS:
            gap_dir = self.out / entry.name / f"gap-{split}"
            if (gap_dir / "gap.json").exists():
                continue
            command = ["run/gap.py", "--checkpoint", str(run_dir), "--out", str(gap_dir), "--split", split, *common,
                       *gap, "--seed", str(self.args.seed), "--threads", "1", "--no-progress"]
            if self.interrupted or not self._run(entry, f"gap-{split}", command):
                return


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be positive, got {args.jobs}")
    if args.train_only and args.report_only:
        parser.error("--train-only and --report-only exclude each other")
    try:
        entries = select(args.only)
    except ValueError as error:
        parser.error(str(error))
    if args.device is not None:
        try:  # refused here, not by each stage: exit 2 before anything runs
            resolve_device(args.device)
        except UsageError as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(args, out)
    started = time.perf_counter()
    if not args.report_only:
        print(f"[atlas] {len(entries)} entries, {args.jobs} at a time, into {out}", flush=True)
        try:
            with ThreadPoolExecutor(args.jobs) as pool:
                list(pool.map(stages.entry, entries))
        except KeyboardInterrupt:
            stages.interrupted = True
    if args.report_only and not any((out / e.name / f"gap-{s}" / "gap.json").exists() for e in entries for s in SPLITS):
        print(f"{PROG}: error: no gap reports under {out} for {args.only!r}: run the atlas first "
              "(without --report-only)", file=sys.stderr)
        return 1
    invocation = None if args.report_only else {
        "entries": [e.name for e in entries], "jobs": args.jobs, "wall_s": round(time.perf_counter() - started, 1)}
    files = write_report(out, entries, invocation, tiny=args.tiny)
    print(f"[atlas] wrote {', '.join(str(f) for f in files)}")
    if stages.interrupted:
        print(f"{PROG}: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    if stages.failed:
        print(f"{PROG}: error: {len(stages.failed)} stage(s) failed: {'; '.join(stages.failed)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
