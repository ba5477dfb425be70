"""CIFAR-10 (Krizhevsky 2009), binarised as Cremer, Li & Duvenaud (2018) use it for the VAE:
32x32 colour images, every channel of every pixel scaled to [0, 1] and set to 1 where it is at
least 0.5 (static: once, for every split; their ``loader.py``: ``ToTensor()`` then ``x >= 0.5``).

Read from the canonical ``cifar10/cifar-10-python.tar.gz`` (md5 checked against the published
sum, the one torchvision's ``CIFAR10.tgz_md5`` lists): its pickled batches ``data_batch_1..5`` and
``test_batch`` are read straight from the archive, nothing is extracted. Without it, torchvision
downloads the same file into the cache directory. As in the authors' code, the validation split
is the FIRST 10% of the training set (5000 images) and training is the rest (45000); test 10000.
Images are flattened channel-first, ``image_shape`` (3, 32, 32), as the other colour data sets.
"""
import io
import pickle
import tarfile
import zlib

import numpy as np
import torch

from pyro_models.datasets.files import DataDir, DataError, verify_checksum
from pyro_models.datasets.vector_data import VectorData

FOLDER = "cifar10"
FILE = "cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"  # the published sum (torchvision 0.29 CIFAR10.tgz_md5)
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MEMBER_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_SHAPE = (3, 32, 32)
THRESHOLD = 0.5  # a pixel (one channel) is 1 where its intensity in [0, 1] is at least this
VALID_FRACTION = 0.1  # the first 10% of the training set (the authors' valid_size=0.1, indices[:split])
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_cifar10(data_dir: DataDir) -> VectorData:
    path = data_dir.path / FOLDER / FILE
    if not path.exists():
        if not data_dir.can_download:
            raise data_dir.missing(f"{FOLDER}/{FILE}", hint=f"; it is the CIFAR-10 python version, {URL} (md5 {MD5})")
        _download_with_torchvision(path.parent)
    verify_checksum(path, MD5, "md5")
    batches = read_batches(path, (*TRAIN_BATCHES, TEST_BATCH))
    train_pixels = [batches[name][0] for name in TRAIN_BATCHES]
    train = binarise_uint8(train_pixels)
    test = binarise_uint8([batches[TEST_BATCH][0]])
    train_labels = torch.from_numpy(np.concatenate([batches[name][1] for name in TRAIN_BATCHES]))
    cut = int(np.floor(VALID_FRACTION * train.shape[0]))
    return VectorData(
        "cifar10",
        train=train[cut:],
        valid=train[:cut],
        test=test,
        image_shape=IMAGE_SHAPE,
        train_labels=train_labels[cut:],
        test_labels=torch.from_numpy(batches[TEST_BATCH][1]),
        dynamic_binarisation=False,
        notes={"label_names": list(LABEL_NAMES)},
    )


def binarise(pixels: torch.Tensor) -> torch.Tensor:
    """The paper's static binarisation of intensities in [0, 1]: 1.0 where ``pixels >= 0.5``, else 0.0."""
    return (pixels >= THRESHOLD).to(torch.float32)


def binarise_uint8(parts: list[np.ndarray]) -> torch.Tensor:
    """(N, 3072) float32 in {0, 1} from uint8 rows (0-255), concatenated: each part scaled by 1/255
    as torchvision's ``ToTensor`` does, then ``binarise``d; filled part by part into one tensor, so
    the full training set never exists as unbinarised floats (a 614 MB copy)."""
    out = torch.empty(sum(len(part) for part in parts), parts[0].shape[1], dtype=torch.float32)
    start = 0
    for part in parts:
        out[start:start + len(part)] = binarise(torch.from_numpy(part).to(torch.float32).div_(255.0))
        start += len(part)
    return out


def read_batches(path, names) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (images (N, 3072) uint8 channel-first, labels (N,) int64)} of the pickled batches
    ``cifar-10-batches-py/<name>`` in the tar.gz at ``path`` (read in one pass, nothing extracted).
    Call it on a file whose checksum was verified: a pickle can run code."""
    wanted = {f"{MEMBER_FOLDER}/{name}": name for name in names}
    found = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                name = wanted.get(member.name)
                if name is None or not member.isfile():
                    continue
                raw = archive.extractfile(member).read()
                found[name] = _parse_batch(path, name, raw)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(f"cannot read {path} as a tar.gz archive ({type(error).__name__}: {error}); the file is "
                        "truncated or corrupt: delete it and copy or download it again") from error
    missing = [name for name in names if name not in found]
    if missing:
        raise DataError(f"{path} has no {MEMBER_FOLDER}/{missing[0]}: it is not the CIFAR-10 python version "
                        f"({URL}); delete it and copy or download it again")
    return found


def _parse_batch(path, name: str, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = pickle.load(io.BytesIO(raw), encoding="bytes")  # the canonical batches were pickled by Python 2
        images, labels = batch[b"data"], batch[b"labels"]
        images = np.asarray(images)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except Exception as error:  # unpickling garbage raises almost anything
        raise DataError(f"{path}: cannot read the batch {MEMBER_FOLDER}/{name} ({type(error).__name__}: {error}); "
                        "delete the file and copy or download it again") from error
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != int(np.prod(IMAGE_SHAPE)) \
            or labels.shape[0] != images.shape[0] or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path}: batch {MEMBER_FOLDER}/{name} is not CIFAR-10's (data (N, 3072) uint8, labels 0-9; "
                        f"got data {images.shape} {images.dtype}, {labels.shape[0]} labels); delete the file and copy "
                        "or download it again")
    return images, labels


def _download_with_torchvision(folder) -> None:
    """torchvision knows the URL and checks the md5; it is imported here only, never by the models."""
    try:
        from torchvision.datasets.utils import download_url

        download_url(URL, str(folder), FILE, MD5)
    except Exception as error:  # no network, mirror down, torchvision missing or broken
        raise DataError(f"could not download CIFAR-10 with torchvision: {error}") from error
