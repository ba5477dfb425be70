"""A tiny CIFAR-10 in the canonical layout, written by the tests (the real file is not on these
machines): the loader's tests and the VAE's convolutional run read it."""
import io
import pickle
import tarfile

import numpy as np

from pyro_models.datasets import cifar10 as c10

PER_BATCH, TEST_IMAGES = 4, 3  # 20 training images: 2 valid (the first 10%), 18 train


def pixel(channel: int, row: int, column: int) -> int:
    """Index of a pixel in a CIFAR-10 row: 1024 red values, then green, then blue, each row-major."""
    return channel * 1024 + row * 32 + column


def tiny_batches(per_batch: int = PER_BATCH, test_images: int = TEST_IMAGES) -> dict:
    """The pickled dicts of a tiny CIFAR-10 (bytes keys, b"data" uint8 N x 3072 channel-major,
    b"labels"), images of 0s except where set: training image n has value n + 1 at pixel (0, 0, 0)
    (below the threshold: the order is checked on the raw values), the first one has red 128 at
    row 5 / column 7, green 127 at row 9 / column 2 and blue 255 at row 31 / column 0, and test
    image 1 has blue 200 at row 4 / column 4."""
    batches, count = {}, 0
    for name in (*c10.TRAIN_BATCHES, c10.TEST_BATCH):
        n = test_images if name == c10.TEST_BATCH else per_batch
        data = np.zeros((n, 3072), np.uint8)
        if name != c10.TEST_BATCH:
            data[:, pixel(0, 0, 0)] = np.arange(count + 1, count + n + 1)
            count += n
        batches[name] = {b"batch_label": name.encode(), b"labels": [i % 10 for i in range(n)], b"data": data}
    first = batches["data_batch_1"][b"data"][0]
    first[pixel(0, 5, 7)], first[pixel(1, 9, 2)], first[pixel(2, 31, 0)] = 128, 127, 255
    batches[c10.TEST_BATCH][b"data"][1, pixel(2, 4, 4)] = 200
    return batches


def write_tiny_cifar10(root, drop: str = "", **sizes) -> dict:
    """``root/cifar10/cifar-10-python.tar.gz`` in the canonical layout (``cifar-10-batches-py/<batch>``)
    holding ``tiny_batches(**sizes)`` but the one named ``drop``; returns the raw arrays by batch name."""
    batches = tiny_batches(**sizes)
    folder = root / c10.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / c10.FILE, "w:gz") as archive:
        for name, batch in batches.items():
            if name == drop:
                continue
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"{c10.MEMBER_FOLDER}/{name}")
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return {name: batch[b"data"] for name, batch in batches.items()}
