"""The Fashion-MNIST loader on a tiny IDX fixture (the real files are not in shared/data)."""

import pytest
import torch
from helpers import write_fake_fashion_mnist

from pyro_models.datasets import IMAGE_DATASETS, DataDir, DataError
from pyro_models.datasets import fashion_mnist as fm
from pyro_models.datasets.fashion_mnist import FILES, load_fashion_mnist
from pyro_models.datasets.files import md5_of


@pytest.fixture
def fixture_dir(tmp_path, monkeypatch):
    folder = write_fake_fashion_mnist(tmp_path)
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
