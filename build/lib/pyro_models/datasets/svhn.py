"""SVHN (Netzer et al. 2011), cropped digits: 32x32 colour images, labels 0-9.

Read from the official ``svhn/{train,test}_32x32.mat`` files (MATLAB v5: ``X`` (32, 32, 3, N)
uint8, ``y`` (N, 1) with 10 meaning digit 0), md5 checked against the sums torchvision
publishes. Without them, torchvision downloads them into the cache directory. Images are
flattened channel-first as floats in [0, 1]. No validation split: the MFCVAE paper trains on
all 73257 training images and reports test accuracy.
"""
import numpy as np
import torch

from pyro_models.datasets.files import DataDir, DataError, verify_checksum
from pyro_models.datasets.vector_data import VectorData

FOLDER = "svhn"
URL = "http://ufldl.stanford.edu/housenumbers/"
MD5 = {  # torchvision.datasets.SVHN.split_list
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
}
IMAGE_SHAPE = (3, 32, 32)


def load_svhn(data_dir: DataDir) -> VectorData:
    folder = data_dir.path / FOLDER
    missing = [name for name in MD5 if not (folder / name).exists()]
    if missing:
        if not data_dir.can_download:
            raise data_dir.missing(f"{FOLDER}/{missing[0]}")
        _download_with_torchvision(folder, missing)
    for name, md5 in MD5.items():
        verify_checksum(folder / name, md5, "md5")
    train, train_labels = read_svhn_mat(folder / "train_32x32.mat")
    test, test_labels = read_svhn_mat(folder / "test_32x32.mat")
    return VectorData("svhn", train=train, valid=None, test=test, image_shape=IMAGE_SHAPE,
                      train_labels=train_labels, test_labels=test_labels,
                      notes={"label_names": [str(d) for d in range(10)]})


def read_svhn_mat(path) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3*32*32) float32 in [0, 1], channel-first, and (N,) int64 labels with 10 -> 0."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as error:  # scipy raises ValueError/TypeError/OSError for garbage
        raise DataError(f"cannot read {path} as a MATLAB file ({error}); delete it and fetch it again") from error
    images, labels = mat.get("X"), mat.get("y")
    if images is None or labels is None or images.shape[:3] != (32, 32, 3) or images.ndim != 4 \
            or labels.size != images.shape[3] or images.dtype != np.uint8:
        raise DataError(f"{path} is not an SVHN 32x32 file (X (32, 32, 3, N) uint8 and y (N, 1)); delete it and fetch it again")
    labels = labels.reshape(-1).astype(np.int64)
    if labels.min() < 1 or labels.max() > 10:
        raise DataError(f"{path}: labels outside 1..10; delete it and fetch it again")
    n = images.shape[3]
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1))).reshape(n, -1)  # (H, W, C, N) -> (N, C, H, W)
    return x.float().div_(255.0), torch.from_numpy(labels % 10)


def _download_with_torchvision(folder, names) -> None:
    """torchvision's downloader checks the md5; it is imported here only, never by the models."""
    try:
        from torchvision.datasets.utils import download_url

        for name in names:
            download_url(URL + name, str(folder), name, MD5[name])
    except Exception as error:  # no network, mirror down, torchvision missing or broken
        raise DataError(f"could not download SVHN with torchvision: {error}") from error
