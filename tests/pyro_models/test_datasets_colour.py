"""The SVHN and 3DShapes loaders on tiny files with the real layouts (the real files are not here)."""
import h5py
import numpy as np
import pytest
import scipy.io
import torch

from pyro_models.datasets import (
    COLOUR_IMAGE_DATASETS,
    IMAGE_DATASETS,
    DataDir,
    DataError,
    shapes3d,
    svhn,
)
from pyro_models.datasets.files import md5_of


def write_svhn(path, n: int, rng) -> dict:
    x = rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8)
    y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # 1..10, 10 meaning digit 0
    scipy.io.savemat(path, {"X": x, "y": y})
    return {"X": x, "y": y}


@pytest.fixture
def svhn_dir(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "svhn"
    folder.mkdir()
    train = write_svhn(folder / "train_32x32.mat", 6, rng)
    test = write_svhn(folder / "test_32x32.mat", 4, rng)
    # the tiny files stand in for the official ones: accept their md5s
    monkeypatch.setattr(svhn, "MD5", {name: md5_of(folder / name) for name in svhn.MD5})
    return tmp_path, train, test


def test_svhn_shapes_values_and_labels(svhn_dir):
    path, train, _ = svhn_dir
    data = svhn.load_svhn(DataDir(path))
    assert data.name == "svhn" and data.image_shape == (3, 32, 32) and data.valid is None
    assert data.train.shape == (6, 3072) and data.test.shape == (4, 3072)
    assert data.train.dtype == torch.float32 and 0 <= data.train.min() and data.train.max() <= 1
    # channel-first flattening: pixel (c, h, w) of image n is X[h, w, c, n]
    image = data.train[5].reshape(3, 32, 32)
    assert image[2, 7, 11] == pytest.approx(train["X"][7, 11, 2, 5] / 255.0)
    assert data.train_labels.tolist() == [1, 2, 3, 4, 5, 6] and data.test_labels.tolist() == [1, 2, 3, 4]
    assert data.train_labels.dtype == torch.int64


def test_svhn_label_10_is_digit_0(tmp_path, monkeypatch):
    folder = tmp_path / "svhn"
    folder.mkdir()
    x = np.zeros((32, 32, 3, 10), np.uint8)
    for name in svhn.MD5:
        scipy.io.savemat(folder / name, {"X": x, "y": np.arange(1, 11).reshape(10, 1)})
    monkeypatch.setattr(svhn, "MD5", {name: md5_of(folder / name) for name in svhn.MD5})
    data = svhn.load_svhn(DataDir(tmp_path))
    assert data.train_labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]


def test_svhn_wrong_md5_is_a_one_line_error(svhn_dir, monkeypatch):
    path, _, _ = svhn_dir
    monkeypatch.setattr(svhn, "MD5", {**svhn.MD5, "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"})
    with pytest.raises(DataError, match="checksum mismatch.*test_32x32.mat") as error:
        svhn.load_svhn(DataDir(path))
    assert "\n" not in str(error.value)


def test_svhn_unreadable_file(svhn_dir, monkeypatch):
    path, _, _ = svhn_dir
    broken = path / "svhn" / "train_32x32.mat"
    broken.write_bytes(b"not a matlab file")
    monkeypatch.setattr(svhn, "MD5", {**svhn.MD5, "train_32x32.mat": md5_of(broken)})
    with pytest.raises(DataError, match="cannot read .*train_32x32.mat") as error:
        svhn.load_svhn(DataDir(path))
    assert "\n" not in str(error.value)


def test_svhn_missing_file_is_named(svhn_dir):
    path, _, _ = svhn_dir
    (path / "svhn" / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match="missing data file svhn/test_32x32.mat") as error:
        svhn.load_svhn(DataDir(path))
    assert "\n" not in str(error.value)


# --- 3dshapes ----------------------------------------------------------------------------------
N_SHAPES = 40


@pytest.fixture
def shapes_dir(tmp_path):
    rng = np.random.default_rng(1)
    indices = np.stack([rng.integers(0, len(grid), N_SHAPES) for grid in shapes3d.FACTORS.values()], axis=1)
    values = np.stack([grid[indices[:, k]] for k, grid in enumerate(shapes3d.FACTORS.values())], axis=1)
    images = rng.integers(0, 256, (N_SHAPES, 64, 64, 3)).astype(np.uint8)
    images[:, 0, 0, 0] = np.arange(N_SHAPES)  # which file row an image came from
    (tmp_path / "3dshapes").mkdir()
    with h5py.File(tmp_path / shapes3d.RELATIVE, "w") as f:
        f["images"] = images
        f["labels"] = values.astype(np.float64)
    return tmp_path, images, indices


def test_3dshapes_split_dtypes_and_labels(shapes_dir):
    path, images, indices = shapes_dir
    data = shapes3d.load_3dshapes(DataDir(path))
    assert data.name == "3dshapes" and data.image_shape == (3, 64, 64) and data.valid is None
    assert data.train.shape == (36, 12288) and data.test.shape == (4, 12288)
    assert data.train.dtype == torch.uint8  # kept as bytes: the real set is 23 GB as float
    assert data.train_labels.shape == (36, 6) and data.train_labels.dtype == torch.int64
    assert data.notes["label_names"] == ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
    rows = torch.cat([data.train[:, 0], data.test[:, 0]]).long()  # pixel (c=0, h=0, w=0)
    assert sorted(rows.tolist()) == list(range(N_SHAPES))  # disjoint, nothing lost
    labels = torch.cat([data.train_labels, data.test_labels])
    assert torch.equal(labels, torch.from_numpy(indices)[rows])  # each image keeps its own labels
    first = data.train[0].reshape(3, 64, 64)  # channel-first: (c, h, w) is file pixel (h, w, c)
    assert first[2, 5, 9] == images[rows[0], 5, 9, 2]
    again = shapes3d.load_3dshapes(DataDir(path))
    assert torch.equal(again.test, data.test) and torch.equal(again.test_labels, data.test_labels)


def test_3dshapes_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError, match="missing data file 3dshapes/3dshapes.h5") as error:
        shapes3d.load_3dshapes(DataDir(tmp_path))
    message = str(error.value)
    assert "https://github.com/deepmind/3d-shapes" in message and "storage.googleapis.com/3d-shapes/3dshapes.h5" in message
    assert "\n" not in message and "to download into" not in message


def test_3dshapes_corrupt_file(shapes_dir):
    path, _, _ = shapes_dir
    (path / shapes3d.RELATIVE).write_bytes(b"\x89HDF\r\n truncated")
    with pytest.raises(DataError, match="cannot read .*3dshapes.h5 as HDF5") as error:
        shapes3d.load_3dshapes(DataDir(path))
    assert "\n" not in str(error.value)


def test_3dshapes_wrong_layout_and_off_grid_labels(tmp_path):
    (tmp_path / "3dshapes").mkdir()
    with h5py.File(tmp_path / shapes3d.RELATIVE, "w") as f:
        f["images"] = np.zeros((4, 32, 32, 3), np.uint8)
        f["labels"] = np.zeros((4, 6))
    with pytest.raises(DataError, match="not the 3dshapes layout"):
        shapes3d.load_3dshapes(DataDir(tmp_path))
    with pytest.raises(DataError, match="factor scale has values off its grid"):
        shapes3d.factor_indices(np.zeros((2, 6)))


def test_registered_apart_from_the_vae_sets():
    assert COLOUR_IMAGE_DATASETS == {"svhn": svhn.load_svhn, "3dshapes": shapes3d.load_3dshapes}
    assert not set(COLOUR_IMAGE_DATASETS) & set(IMAGE_DATASETS)
