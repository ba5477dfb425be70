"""The CIFAR-10 loader on a tiny tar.gz in the canonical layout (the real file is not in shared/data):
channel order, the paper's threshold binarisation, the first 10% of training as validation, and
one-line errors for a corrupt, altered or missing file."""
import numpy as np
import pytest
import torch
from cifar10_fixtures import tiny_batches, write_tiny_cifar10

from pyro_models.datasets import COLOUR_IMAGE_DATASETS, IMAGE_DATASETS, DataDir, DataError
from pyro_models.datasets import cifar10 as c10
from pyro_models.datasets.files import md5_of


@pytest.fixture
def tiny_dir(tmp_path, monkeypatch):
    write_tiny_cifar10(tmp_path)
    monkeypatch.setattr(c10, "MD5", md5_of(tmp_path / c10.FOLDER / c10.FILE))  # the tiny file's own sum
    return tmp_path


def load_error(directory) -> str:
    with pytest.raises(DataError) as caught:
        c10.load_cifar10(DataDir(directory))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_shapes_splits_and_registration(tiny_dir):
    data = c10.load_cifar10(DataDir(tiny_dir))
    assert data.name == "cifar10" and data.image_shape == (3, 32, 32) and data.data_dim == 3072
    assert data.valid.shape == (2, 3072) and data.train.shape == (18, 3072) and data.test.shape == (3, 3072)
    assert data.train.dtype == torch.float32 and not data.dynamic_binarisation
    for split in (data.train, data.valid, data.test):
        assert set(split.unique().tolist()) <= {0.0, 1.0}
    assert data.train_labels.tolist() == [i % 10 for i in range(2, 4)] + [i % 10 for i in range(4)] * 4
    assert data.test_labels.tolist() == [0, 1, 2] and data.train_labels.dtype == torch.int64
    assert data.notes["label_names"][0] == "airplane" and len(data.notes["label_names"]) == 10
    assert IMAGE_DATASETS["cifar10"] is c10.load_cifar10 and "cifar10" not in COLOUR_IMAGE_DATASETS


def test_validation_is_the_first_tenth_of_the_training_set(tiny_dir):
    """Image n of the training set carries n + 1 at pixel (0, 0, 0): every value but 0 binarises to 1
    at 128 and above only, so the values 1..20 are 0 after binarisation; compare the raw order."""
    raw = tiny_batches()
    every = np.concatenate([raw[name][b"data"] for name in c10.TRAIN_BATCHES])
    binary = torch.from_numpy((every >= 128).astype(np.float32))
    data = c10.load_cifar10(DataDir(tiny_dir))
    assert torch.equal(data.valid, binary[:2]) and torch.equal(data.train, binary[2:])
    assert data.valid[0].sum() == 2  # red 128 and blue 255 of the first image; green 127 is below the threshold


def test_channel_order_and_position(tiny_dir):
    data = c10.load_cifar10(DataDir(tiny_dir))
    first = data.valid[0].reshape(3, 32, 32)  # training image 0 is the first validation image
    assert first[0, 5, 7] == 1 and first[0, 7, 5] == 0  # red, row 5, column 7 (not transposed)
    assert first[1, 9, 2] == 0  # green 127 < 128
    assert first[2, 31, 0] == 1
    assert first.sum() == 2 and first[1:, 5, 7].sum() == 0  # nothing leaked into other channels
    assert data.test[1].reshape(3, 32, 32)[2, 4, 4] == 1 and data.test[1].sum() == 1


def test_threshold_is_at_least_one_half():
    below = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0))
    assert c10.binarise(torch.tensor([0.5, below.item(), 0.0, 1.0])).tolist() == [1.0, 0.0, 0.0, 1.0]
    # uint8 pixels are scaled by 1/255 first, as torchvision's ToTensor does: 127 -> 0.498, 128 -> 0.502
    assert c10.binarise_uint8([np.array([[0, 127, 128, 255]], np.uint8)]).tolist() == [[0.0, 0.0, 1.0, 1.0]]
    every_value = np.arange(256, dtype=np.uint8).reshape(1, 256)
    assert torch.equal(c10.binarise_uint8([every_value]), torch.from_numpy((every_value >= 128).astype(np.float32)))


def test_published_md5_and_url_are_torchvision_s():
    datasets = pytest.importorskip("torchvision.datasets")
    assert c10.MD5 == datasets.CIFAR10.tgz_md5 == "c58f30108f718f92721af3b95e74349a"
    assert c10.URL == datasets.CIFAR10.url and c10.FILE == datasets.CIFAR10.filename
    assert c10.MEMBER_FOLDER == datasets.CIFAR10.base_folder
    assert [name for name, _ in datasets.CIFAR10.train_list] == list(c10.TRAIN_BATCHES)


def test_the_tiny_file_fails_the_published_md5(tmp_path):
    write_tiny_cifar10(tmp_path)
    path = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    message = load_error(tmp_path)
    assert message.startswith(f"checksum mismatch for {path}: md5 ")
    assert "expected c58f30108f718f92721af3b95e74349a; the file is truncated or corrupt: delete it" in message


def test_a_truncated_file_is_a_checksum_error(tiny_dir):
    path = tiny_dir / "cifar10" / "cifar-10-python.tar.gz"
    path.write_bytes(path.read_bytes()[:-100])
    assert load_error(tiny_dir).startswith(f"checksum mismatch for {path}: md5 ")


def test_an_unreadable_archive_with_a_matching_sum_is_a_data_error(tiny_dir, monkeypatch):
    path = tiny_dir / "cifar10" / "cifar-10-python.tar.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    monkeypatch.setattr(c10, "MD5", md5_of(path))
    assert load_error(tiny_dir).startswith(f"cannot read {path} as a tar.gz archive")


def test_a_missing_batch_is_named(tmp_path, monkeypatch):
    write_tiny_cifar10(tmp_path, drop="data_batch_3")
    monkeypatch.setattr(c10, "MD5", md5_of(tmp_path / "cifar10" / "cifar-10-python.tar.gz"))
    assert "has no cifar-10-batches-py/data_batch_3" in load_error(tmp_path)


def test_a_missing_file_without_download_names_it_and_where_to_get_it(tmp_path):
    message = load_error(tmp_path)  # a --data-dir directory is never downloaded into
    assert message.startswith(f"missing data file cifar10/cifar-10-python.tar.gz in data directory {tmp_path} "
                              "(--data-dir)")
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (md5 c58f30108f718f92721af3b95e74349a)" in message
    assert "or unset both to download into" in message
    assert not (tmp_path / "cifar10").exists()
