"""``python -m lvm_app --model M ...``: train and evaluate (the same as run/svi.py)."""
import sys

from lvm_app.entry import train

sys.exit(train())
