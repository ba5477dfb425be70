#!/usr/bin/env python
"""The gap atlas: ``python run/gap_atlas.py [--out runs/atlas] [--jobs 2]`` (see --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lvm_app.entry import atlas  # noqa: E402  (imports the command itself when called)

if __name__ == "__main__":
    sys.exit(atlas())
