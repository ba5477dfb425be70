"""Fashion-MNIST (Xiao et al. 2017): 28x28 grey-level clothing images. ``fashion_mnist`` is
binarised like MNIST (training images re-binarised at every step, evaluation splits binarised
once with a fixed seed, the last 10000 training images held out); ``fashion_mnist_static`` as
Cremer et al. (2018) binarise it: once, at 0.5, the last 5000 held out.

Read from the four canonical IDX ``.gz`` files in ``fashion_mnist/`` (md5 checked against the
published sums, the ones torchvision's ``FashionMNIST.resources`` lists) with the MNIST IDX reader;
without them, torchvision downloads the same files into the cache directory.
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
STATIC_NUM_VALID = 5000  # Cremer et al.: images 55000-59999 held out
IMAGE_SHAPE = (28, 28)


def load_fashion_mnist(data_dir: DataDir) -> VectorData:
    """The MNIST protocol: training images re-binarised at every step, the last 10000 held out."""
    images, labels = _read(data_dir)
    train, test = images["train"], images["t10k"]
    num_valid = min(NUM_VALID, train.shape[0] // 6)  # the full set: 50000 / 10000; tiny copies keep most for training
    cut = train.shape[0] - num_valid
    return VectorData(
        "fashion_mnist",
        train=train[:cut],
        valid=binarise_fixed(train[cut:], EVAL_BINARISATION_SEED),
        test=binarise_fixed(test, EVAL_BINARISATION_SEED + 1),
        image_shape=tuple(IMAGE_SHAPE),
        train_labels=labels["train"][:cut],
        test_labels=labels["t10k"],
        dynamic_binarisation=True,
    )


def load_fashion_mnist_static(data_dir: DataDir) -> VectorData:
    """Cremer et al.'s protocol (their ``loader.py``): every image binarised once at 0.5 (a pixel is
    1 where its grey level / 255 is at least 0.5), the first 55000 training images for training
    and the last 5000 held out."""
    images, labels = _read(data_dir)
    train, test = (threshold(images[split]) for split in ("train", "t10k"))
    num_valid = min(STATIC_NUM_VALID, train.shape[0] // 12)  # tiny copies keep most for training
    cut = train.shape[0] - num_valid
    return VectorData(
        "fashion_mnist_static",
        train=train[:cut],
        valid=train[cut:],
        test=test,
        image_shape=tuple(IMAGE_SHAPE),
        train_labels=labels["train"][:cut],
        test_labels=labels["t10k"],
        dynamic_binarisation=False,
    )


def threshold(images: torch.Tensor) -> torch.Tensor:
    return (images >= 0.5).to(images.dtype)


def _read(data_dir: DataDir) -> tuple[dict, dict]:
    """Grey levels in [0, 1] as (N, 784) float tensors and int64 labels, per split (train, t10k)."""
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
        if images[split].shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{folder}: {split} images are {images[split].shape[1:]}, not {IMAGE_SHAPE}")
    grey = {split: torch.from_numpy(images[split].reshape(len(images[split]), -1).astype(np.float32) / 255.0)
            for split in images}
    return grey, {split: torch.from_numpy(labels[split].astype(np.int64)) for split in labels}


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
