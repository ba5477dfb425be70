"""Data loaders on the real files (with PYRO_MODELS_DATA) and on small fixtures written here."""
import gzip
import shutil

import numpy as np
import pytest

from pyro_models.datasets import DataDir, DataError, load_binarized_mnist, load_digits_binarised, load_mnist
from pyro_models.datasets.mnist import read_idx


def test_binarized_mnist_is_the_larochelle_split(data_dir):
    data = load_binarized_mnist(DataDir(data_dir))
    assert (data.train.shape, data.valid.shape, data.test.shape) == ((50000, 784), (10000, 784), (10000, 784))
    assert set(data.train.unique().tolist()) == {0.0, 1.0}
    assert not data.dynamic_binarisation


def test_mnist_for_dynamic_binarisation(data_dir):
    data = load_mnist(DataDir(data_dir))
    assert data.train.shape == (50000, 784) and data.test.shape == (10000, 784)
    assert data.dynamic_binarisation and 0 < data.train.mean() < 1
    assert set(data.test.unique().tolist()) == {0.0, 1.0}  # evaluation splits binarised once
    assert sorted(data.test_labels.unique().tolist()) == list(range(10))


def test_mnist_corrupt_file_fails_its_md5(tmp_path, data_dir):
    shutil.copytree(data_dir / "mnist", tmp_path / "mnist")
    target = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    target.chmod(0o644)
    raw = bytearray(target.read_bytes())
    raw[100] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum mismatch .*t10k-labels"):
        load_mnist(DataDir(tmp_path))


def test_amat_files_are_read_when_there_is_no_npz(tmp_path, monkeypatch):
    import pyro_models.datasets.binarized_mnist as bm

    monkeypatch.setattr(bm, "SPLIT_SIZES", {"train": 5, "valid": 2, "test": 3})
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, rows in bm.SPLIT_SIZES.items():
        np.savetxt(folder / f"binarized_mnist_{split}.amat", rng.integers(0, 2, (rows, 784)), fmt="%d")
    data = load_binarized_mnist(DataDir(tmp_path))
    assert data.train.shape == (5, 784) and data.test.shape == (3, 784)
    (folder / "binarized_mnist_test.amat").write_text("0 1 0\n")  # truncated file
    with pytest.raises(DataError, match="expected \\(3, 784\\)"):
        load_binarized_mnist(DataDir(tmp_path))


def test_idx_reader_rejects_truncated_files(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 1, 0, 0, 0, 10]) + bytes(range(5)))  # says 10 items, has 5
    with pytest.raises(DataError, match="not a complete IDX"):
        read_idx(path)


def test_embedded_digits_need_no_download():
    data = load_digits_binarised()
    assert data.train.shape == (1500, 64) and data.test.shape == (297, 64)
    assert set(data.train.unique().tolist()) == {0.0, 1.0}


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_MODELS_DATA", str(tmp_path))
    assert DataDir().path == tmp_path and not DataDir().can_download
    assert DataDir("/elsewhere").origin == "--data-dir"
    monkeypatch.delenv("PYRO_MODELS_DATA")
    assert DataDir().can_download
