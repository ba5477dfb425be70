"""The Fashion-MNIST loader on a tiny IDX fixture (the real files are not in shared/data)."""

import pytest
import torch
from helpers import write_fake_fashion_mnist

from pyro_models.datasets import IMAGE_DATASETS, DataDir, DataError
from pyro_models.datasets import fashion_mnist as fm
from pyro_models.datasets.fashion_mnist import FILES, load_fashion_mnist, load_fashion_mnist_static
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


def test_the_static_variant_thresholds_at_one_half_once_as_cremer_et_al(fixture_dir):
    """fashion_mnist_static: a pixel is 1 where grey / 255 >= 0.5 (128 -> 1, 127 -> 0), every split,
    no re-binarisation; the last twelfth held out (5000 of 60000 for the full set)."""
    grey = load_fashion_mnist(DataDir(fixture_dir))
    data = load_fashion_mnist_static(DataDir(fixture_dir))
    assert data.name == "fashion_mnist_static" and not data.dynamic_binarisation and data.image_shape == (28, 28)
    assert data.train.shape == (11, 784) and data.valid.shape == (1, 784) and data.test.shape == (4, 784)
    from pyro_models.datasets.mnist import read_idx

    raw = read_idx(fixture_dir / "fashion_mnist" / "train-images-idx3-ubyte.gz").reshape(12, -1)
    expected = torch.from_numpy((raw >= 128).astype("float32"))
    assert torch.equal(torch.cat([data.train, data.valid]), expected)
    assert ((raw == 128) | (raw == 127)).any()  # the fixture holds both sides of the threshold
    assert torch.equal(load_fashion_mnist_static(DataDir(fixture_dir)).train, data.train)
    assert grey.train.shape[0] == 10  # the dynamic variant keeps its own split
    assert IMAGE_DATASETS["fashion_mnist_static"] is load_fashion_mnist_static
