#!/usr/bin/env python
"""Evaluate a CPC run: linear probes and baselines, ``python run/probe.py --run DIR`` (see --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lvm_app.entry import probe  # noqa: E402  (imports the command itself when called)

if __name__ == "__main__":
    sys.exit(probe())
