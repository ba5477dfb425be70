"""Fashion-MNIST (Xiao et al. 2017): 28x28 grey-level clothing images, binarised like MNIST
(training images re-binarised at every step, evaluation splits binarised once with a fixed seed).

Read from the four canonical IDX ``.gz`` files in ``fashion_mnist/`` (md5 checked against the
published sums, the ones torchvision's ``FashionMNIST.resources`` lists) with the MNIST IDX reader;
without them, torchvision downloads the same files into the cache directory. The last 10000
training images are held out as the validation split, as for MNIST.
"""
import numpy as np
import torch

from pyro_models.datasets.files import DataDir, DataError, verify_checksum
from pyro_models.datasets.mnist import read_idx
from pyro_models.datasets.vector_data import VectorData, binarise_fixed

FOLDER = "fashion_mnist"
# The published md5 of the canonical files (Zalando's release; torchvision 0.29 FashionMNIST.resources)
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FILES = tuple(MD5)
EVAL_BINARISATION_SEED = 2345
NUM_VALID = 10000


def load_fashion_mnist(data_dir: DataDir) -> VectorData:
    folder = data_dir.path / FOLDER
    if not all((folder / name).exists() for name in FILES):
        if not data_dir.can_download:
            missing = next(name for name in FILES if not (folder / name).exists())
            raise data_dir.missing(f"{FOLDER}/{missing}", hint="; Fashion-MNIST's four .gz files are those of "
                                   "github.com/zalandoresearch/fashion-mnist (data/fashion/)")
        _download_with_torchvision(folder)
    for name in FILES:
        verify_checksum(folder / name, MD5[name], "md5")
    images = {split: read_idx(folder / f"{split}-images-idx3-ubyte.gz") for split in ("train", "t10k")}
    labels = {split: read_idx(folder / f"{split}-labels-idx1-ubyte.gz") for split in ("train", "t10k")}
    for split in ("train", "t10k"):
        if images[split].ndim != 3 or images[split].shape[0] != labels[split].shape[0]:
            raise DataError(f"{folder}: {split} images {images[split].shape} do not match labels {labels[split].shape}")
    height, width = images["train"].shape[1:]
    train = torch.from_numpy(images["train"].reshape(len(images["train"]), -1).astype(np.float32) / 255.0)
    test = torch.from_numpy(images["t10k"].reshape(len(images["t10k"]), -1).astype(np.float32) / 255.0)
    train_labels = torch.from_numpy(labels["train"].astype(np.int64))
    num_valid = min(NUM_VALID, train.shape[0] // 6)  # the full set: 50000 / 10000; tiny copies keep most for training
    cut = train.shape[0] - num_valid
    return VectorData(
        "fashion_mnist",
        train=train[:cut],
        valid=binarise_fixed(train[cut:], EVAL_BINARISATION_SEED),
        test=binarise_fixed(test, EVAL_BINARISATION_SEED + 1),
        image_shape=(height, width),
        train_labels=train_labels[:cut],
        test_labels=torch.from_numpy(labels["t10k"].astype(np.int64)),
        dynamic_binarisation=True,
    )


def _download_with_torchvision(folder) -> None:
    """torchvision knows the mirrors; it is imported here only, never by the models."""
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(root=str(folder.parent / "torchvision"), train=True, download=True)
    except Exception as error:  # no network, mirror down, torchvision missing or broken
        raise DataError(f"could not download Fashion-MNIST with torchvision: {error}") from error
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder.parent / "torchvision" / "FashionMNIST" / "raw"
    for name in FILES:
        (folder / name).write_bytes((raw / name).read_bytes())
