"""Statically binarised MNIST of Larochelle & Murray (2011): 50000 / 10000 / 10000.

Read from ``binarized_mnist/binarized_mnist_uint8.npz`` (the re-packed copy in shared/data,
checksum verified) or from the original ``binarized_mnist_{train,valid,test}.amat`` files,
which are downloaded into the cache directory when neither is present.
"""
from pathlib import Path

import numpy as np
import torch

from pyro_models.datasets.files import DataDir, DataError, download, verify_checksum
from pyro_models.datasets.vector_data import VectorData

FOLDER = "binarized_mnist"
NPZ = f"{FOLDER}/binarized_mnist_uint8.npz"
NPZ_SHA256 = "350243cb824d66d022e0c3e87cac231231668817ff03f5f6d7b6533017d56b4b"
AMAT_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
SPLIT_SIZES = {"train": 50000, "valid": 10000, "test": 10000}


def load_binarized_mnist(data_dir: DataDir) -> VectorData:
    npz = data_dir.path / NPZ
    amat = {split: data_dir.path / FOLDER / f"binarized_mnist_{split}.amat" for split in SPLIT_SIZES}
    if npz.exists():
        verify_checksum(npz, NPZ_SHA256)
        with np.load(npz) as archive:
            splits = {split: archive[split] for split in SPLIT_SIZES}
    else:
        if not all(path.exists() for path in amat.values()):
            if not data_dir.can_download:
                raise data_dir.missing(NPZ, hint=f" (or the three .amat files in {FOLDER}/)")
            for split, path in amat.items():
                if not path.exists():
                    download(AMAT_URL.format(split=split), path)
        splits = {split: _read_amat(path) for split, path in amat.items()}
    for split, array in splits.items():
        _check(array, split, SPLIT_SIZES[split], npz if npz.exists() else amat[split])
    as_float = {split: torch.from_numpy(array.astype(np.float32)) for split, array in splits.items()}
    return VectorData("binarized_mnist", as_float["train"], as_float["valid"], as_float["test"], (28, 28))


def _read_amat(path: Path) -> np.ndarray:
    try:
        return np.loadtxt(path, dtype=np.uint8, ndmin=2)
    except ValueError as error:
        raise DataError(f"cannot parse {path}: {error}; the file is corrupt: delete it and fetch it again") from error


def _check(array: np.ndarray, split: str, rows: int, source: Path) -> None:
    if array.shape != (rows, 784) or array.max() > 1:
        raise DataError(
            f"{source}: split {split!r} has shape {array.shape} and values up to {array.max()}, "
            f"expected ({rows}, 784) binary pixels; the file is corrupt: fetch it again"
        )
