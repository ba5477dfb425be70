"""The expected sha256 of the 3000 recordings of the Free Spoken Digit Dataset v1.0.10
(``fsdd/recordings/*.wav``), shipped as package data (``fsdd_sha256.txt``) and checked by
``pyro_models.cpc.data.load_fsdd``.

Why this form: one line per file, so a truncated or altered recording is refused with its own name
(a single digest over all files could only say "something in recordings/ differs); the first 16
hex digits (64 bits) of each sha256, so an accidental corruption (truncation, bit rot, an
interrupted copy) passes with probability 2^-64. It guards against damage, not against a forger
(who could also edit the list). The list is exactly ``cut -c1-16,65- fsdd/SHA256SUMS.recordings``
run in the data directory; tests/test_data_integrity.py checks that when the data are present.
"""
import functools
from importlib import resources
from types import MappingProxyType

SUMS_FILE = "fsdd_sha256.txt"


@functools.cache
def recording_sums() -> MappingProxyType:
    """File name -> the first 16 hex digits of its sha256 (read-only: the mapping is shared)."""
    text = resources.files("pyro_models.cpc").joinpath(SUMS_FILE).read_text()
    return MappingProxyType({name: digest for digest, name in (line.split("  ") for line in text.splitlines())})
