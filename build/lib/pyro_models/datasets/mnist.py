"""MNIST (LeCun et al.): grey-level images for dynamic binarisation.

Read from the four canonical IDX ``.gz`` files in ``mnist/`` (md5 checked against the published
sums). Without them, torchvision downloads the same files into the cache directory. The last
10000 training images are held out as the validation split.
"""
import gzip
import struct

import numpy as np
import torch

from pyro_models.datasets.files import DataDir, DataError, verify_checksum
from pyro_models.datasets.vector_data import VectorData, binarise_fixed

FOLDER = "mnist"
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
EVAL_BINARISATION_SEED = 1234


def load_mnist(data_dir: DataDir) -> VectorData:
    folder = data_dir.path / FOLDER
    if not all((folder / name).exists() for name in MD5):
        if not data_dir.can_download:
            missing = next(name for name in MD5 if not (folder / name).exists())
            raise data_dir.missing(f"{FOLDER}/{missing}")
        _download_with_torchvision(folder)
    for name, md5 in MD5.items():
        verify_checksum(folder / name, md5, "md5")
    images = {split: read_idx(folder / f"{split}-images-idx3-ubyte.gz") for split in ("train", "t10k")}
    labels = {split: read_idx(folder / f"{split}-labels-idx1-ubyte.gz") for split in ("train", "t10k")}
    train = torch.from_numpy(images["train"].reshape(-1, 784).astype(np.float32) / 255.0)
    test = torch.from_numpy(images["t10k"].reshape(-1, 784).astype(np.float32) / 255.0)
    train_labels = torch.from_numpy(labels["train"].astype(np.int64))
    return VectorData(
        "mnist",
        train=train[:50000],
        valid=binarise_fixed(train[50000:], EVAL_BINARISATION_SEED),
        test=binarise_fixed(test, EVAL_BINARISATION_SEED + 1),
        image_shape=(28, 28),
        train_labels=train_labels[:50000],
        test_labels=torch.from_numpy(labels["t10k"].astype(np.int64)),
        dynamic_binarisation=True,
    )


def read_idx(path) -> np.ndarray:
    """An IDX file (the MNIST format): magic, dimension sizes, then unsigned bytes."""
    try:
        with gzip.open(path, "rb") as f:
            zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
            shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
            data = np.frombuffer(f.read(), dtype=np.uint8)
    except (OSError, EOFError, struct.error) as error:
        raise DataError(f"cannot read {path}: {error}; delete it and fetch it again") from error
    if zero != 0 or dtype_code != 0x08 or data.size != int(np.prod(shape)):
        raise DataError(f"{path} is not a complete IDX file of unsigned bytes; delete it and fetch it again")
    return data.reshape(shape)


def _download_with_torchvision(folder) -> None:
    """torchvision knows the mirrors; it is imported here only, never by the models."""
    from torchvision.datasets import MNIST

    try:
        MNIST(root=str(folder.parent / "torchvision"), train=True, download=True)
    except Exception as error:  # no network, mirror down
        raise DataError(f"could not download MNIST with torchvision: {error}") from error
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder.parent / "torchvision" / "MNIST" / "raw"
    for name in MD5:
        (folder / name).write_bytes((raw / name).read_bytes())
