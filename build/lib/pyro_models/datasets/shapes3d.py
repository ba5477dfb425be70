"""3DShapes (Burgess and Kim 2018): 480000 renders of 64x64 colour scenes, six factors.

Read from ``3dshapes/3dshapes.h5`` with h5py (``images`` (N, 64, 64, 3) uint8, ``labels``
(N, 6) float64). The file is not downloaded here: fetch it from
https://github.com/deepmind/3d-shapes. Images stay uint8 (flattened channel-first): as float32
the full set would take 23 GB, as uint8 it takes 5.9 GB; batches are converted with
``x.float() / 255``. Each factor's value becomes its class index on the factor's published grid.
A fixed seeded 10% of the images is the test split; both splits are shuffled, so a prefix of
either is a fair sample (the file is ordered by factor).
"""
import numpy as np
import torch

from pyro_models.datasets.files import DataDir, DataError
from pyro_models.datasets.vector_data import VectorData

RELATIVE = "3dshapes/3dshapes.h5"
WHERE = ("; it cannot be downloaded automatically: get 3dshapes.h5 from https://github.com/deepmind/3d-shapes "
         "(https://storage.googleapis.com/3d-shapes/3dshapes.h5)")
FACTORS = {  # name -> the values it takes, in the file's column order
    "floor_hue": np.linspace(0.0, 0.9, 10),
    "wall_hue": np.linspace(0.0, 0.9, 10),
    "object_hue": np.linspace(0.0, 0.9, 10),
    "scale": np.linspace(0.75, 1.25, 8),
    "shape": np.arange(4.0),
    "orientation": np.linspace(-30.0, 30.0, 15),
}
IMAGE_SHAPE = (3, 64, 64)
TEST_FRACTION = 0.1
SPLIT_SEED = 20180101
CHUNK = 20000  # images read from the file at a time (245 MB), so the splits are filled without a full extra copy


def load_3dshapes(data_dir: DataDir) -> VectorData:
    path = data_dir.path / RELATIVE
    if not path.exists():
        raise data_dir.missing(RELATIVE, hint=WHERE, downloadable=False)
    import h5py

    try:
        with h5py.File(path, "r") as f:
            images, labels = _checked(f, path)
            return _split(images, factor_indices(labels[()], path))
    except OSError as error:  # not HDF5, truncated
        raise DataError(f"cannot read {path} as HDF5 ({error}); delete it and copy it again") from error


def _checked(f, path):
    if "images" not in f or "labels" not in f:
        raise DataError(f"{path} has no 'images' and 'labels' datasets; it is not 3dshapes.h5")
    images, labels = f["images"], f["labels"]
    n = images.shape[0]
    if images.shape[1:] != (64, 64, 3) or images.dtype != np.uint8 or labels.shape != (n, len(FACTORS)):
        raise DataError(f"{path}: images {images.shape} {images.dtype} and labels {labels.shape} are not the "
                        f"3dshapes layout (N, 64, 64, 3) uint8 and (N, {len(FACTORS)})")
    return images, labels


def factor_indices(values: np.ndarray, path="3dshapes.h5") -> torch.Tensor:
    """(N, 6) factor values -> (N, 6) int64 class indices on each factor's grid."""
    columns = []
    for k, (name, grid) in enumerate(FACTORS.items()):
        distance = np.abs(values[:, k, None] - grid)
        index = distance.argmin(axis=1)
        if (distance[np.arange(len(index)), index] > 1e-3 * (grid[-1] - grid[0])).any():
            raise DataError(f"{path}: factor {name} has values off its grid {np.round(grid, 3).tolist()}")
        columns.append(index)
    return torch.from_numpy(np.stack(columns, axis=1).astype(np.int64))


def _split(images, labels: torch.Tensor) -> VectorData:
    n = images.shape[0]
    n_test = round(n * TEST_FRACTION)
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    is_test = np.zeros(n, dtype=bool)
    is_test[order[:n_test]] = True
    row = np.empty(n, dtype=np.int64)  # each image's row in its split, in shuffled order
    row[order[:n_test]] = np.arange(n_test)
    row[order[n_test:]] = np.arange(n - n_test)
    test = torch.empty(n_test, int(np.prod(IMAGE_SHAPE)), dtype=torch.uint8)
    train = torch.empty(n - n_test, test.shape[1], dtype=torch.uint8)
    for start in range(0, n, CHUNK):
        chunk = images[start:start + CHUNK]
        flat = chunk.transpose(0, 3, 1, 2).reshape(len(chunk), -1)  # HWC -> CHW
        mask, rows = is_test[start:start + CHUNK], row[start:start + CHUNK]
        test.numpy()[rows[mask]] = flat[mask]
        train.numpy()[rows[~mask]] = flat[~mask]
    test_labels = torch.empty(n_test, labels.shape[1], dtype=torch.int64)
    train_labels = torch.empty(n - n_test, labels.shape[1], dtype=torch.int64)
    mask = torch.from_numpy(is_test)
    test_labels[row[is_test]] = labels[mask]
    train_labels[row[~is_test]] = labels[~mask]
    return VectorData("3dshapes", train=train, valid=None, test=test, image_shape=IMAGE_SHAPE,
                      train_labels=train_labels, test_labels=test_labels,
                      notes={"label_names": list(FACTORS), "num_classes": [len(g) for g in FACTORS.values()]})
