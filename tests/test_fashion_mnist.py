"""The Fashion-MNIST loader on a tiny IDX fixture (the real files are not in shared/data)."""
import gzip
import struct

import numpy as np
import pytest
import torch

from pyro_models.datasets import IMAGE_DATASETS, DataDir, DataError
from pyro_models.datasets import fashion_mnist as fm
from pyro_models.datasets.fashion_mnist import FILES, load_fashion_mnist
from pyro_models.datasets.files import md5_of


def write_idx(path, array: np.ndarray):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


@pytest.fixture
def fixture_dir(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "fashion_mnist"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 12))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (4, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 4))
    monkeypatch.setattr(fm, "MD5", {name: md5_of(folder / name) for name in FILES})  # the fixture's own sums
    return tmp_path


def test_loader_reads_idx_files_and_binarises_like_mnist(fixture_dir):
    data = load_fashion_mnist(DataDir(fixture_dir))
    assert data.name == "fashion_mnist" and data.image_shape == (28, 28) and data.data_dim == 784
    assert data.train.shape == (10, 784) and data.valid.shape == (2, 784) and data.test.shape == (4, 784)
    assert data.dynamic_binarisation and 0 <= data.train.min() and data.train.max() <= 1
    assert set(data.test.unique().tolist()) <= {0.0, 1.0} and set(data.valid.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(load_fashion_mnist(DataDir(fixture_dir)).test, data.test)  # fixed evaluation binarisation
    assert data.train_labels.shape == (10,)
    assert IMAGE_DATASETS["fashion_mnist"] is load_fashion_mnist


def test_a_missing_file_is_named(fixture_dir):
    (fixture_dir / "fashion_mnist" / FILES[2]).unlink()
    with pytest.raises(DataError, match=FILES[2]):
        load_fashion_mnist(DataDir(fixture_dir))
