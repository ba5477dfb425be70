"""Finding data files: the data directory, checksums, and errors that say what to do next."""
import hashlib
import os
import tempfile
from pathlib import Path

ENV_VAR = "PYRO_MODELS_DATA"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pyro_models"


class DataError(RuntimeError):
    """A data file is missing, corrupt or malformed; the message says how to fix it."""


class DataDir:
    """The data directory: ``--data-dir``, else ``$PYRO_MODELS_DATA``, else the user cache.

    Only the cache directory receives downloads: a directory the user named is never written to.
    """

    def __init__(self, cli_value: str | os.PathLike | None = None):
        if cli_value is not None:
            self.path, self.origin = Path(cli_value), "--data-dir"
        elif os.environ.get(ENV_VAR):
            self.path, self.origin = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
        else:
            self.path, self.origin = CACHE_DIR, "the default cache directory"

    @property
    def can_download(self) -> bool:
        return self.origin == "the default cache directory"

    def describe(self) -> str:
        return f"{self.path} ({self.origin})"

    def missing(self, relative: str, hint: str = "", downloadable: bool = True) -> DataError:
        """``downloadable=False`` for files no loader can fetch (the hint then says where to get them)."""
        how = (
            f"put the file there, or point --data-dir or ${ENV_VAR} at a directory that has "
            f"it (same layout as shared/data; see its README)"
        )
        if downloadable and not self.can_download:
            how += f", or unset both to download into {CACHE_DIR}"
        return DataError(f"missing data file {relative} in data directory {self.describe()}: {how}{hint}")


def digest_of(path: Path, algorithm: str) -> str:
    """The file's hex digest (``hashlib`` algorithm name), read in 1 MB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def md5_of(path: Path) -> str:
    return digest_of(path, "md5")


REFETCH = "delete it and copy or download it again"


def verify_checksum(path: Path, expected: str, algorithm: str = "sha256", how: str = REFETCH) -> None:
    check_digest(path, digest_of(path, algorithm), expected, algorithm, how)


def check_digest(path: Path, actual: str, expected: str, algorithm: str = "sha256", how: str = REFETCH) -> None:
    """``actual``: the hex digest of ``path``; ``expected`` may be a prefix of it (a shortened sum).
    ``how``: what to do about a mismatch (where to fetch the file again)."""
    if not expected or not actual.startswith(expected):
        shortened = "" if len(expected) == len(actual) else f" (its first {len(expected)} hex digits)"
        raise DataError(
            f"checksum mismatch for {path}: {algorithm} {actual}, expected {expected}{shortened}; the file is "
            f"truncated or corrupt: {how}"
        )


def decode_lines(path: Path, raw: bytes, how: str = REFETCH) -> list[str]:
    """The UTF-8 text lines of ``raw`` (the bytes of ``path``), without their newlines; bytes that are
    not UTF-8 are a DataError naming the file and the line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise DataError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{raw[error.start]:02x}, byte {column} of the line); the file is "
            f"corrupt or in another encoding: {how}"
        ) from None
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def download(url: str, target: Path) -> None:
    """Fetch ``url`` to ``target`` through a temporary file (no partial file is left behind)."""
    import urllib.request

    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")  # never a link
    try:
        with urllib.request.urlopen(url, timeout=60) as response, os.fdopen(handle, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
        os.replace(tmp, target)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"could not download {url} to {target}: {error}") from error
