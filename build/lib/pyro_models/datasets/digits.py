"""The embedded default: scikit-learn's bundled UCI 8x8 digits (1797 images), binarised.

It ships inside scikit-learn, so ``python run/svi.py --model vae`` runs with no download.
Pixels (0..16) are binarised at 8; a fixed, stratified-by-seed split keeps 297 images for test.
"""
import numpy as np
import torch

from pyro_models.datasets.vector_data import VectorData

NUM_TEST = 297


def load_digits_binarised(data_dir=None) -> VectorData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy((bunch.data >= 8).astype(np.float32))
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, test = order[NUM_TEST:], order[:NUM_TEST]
    return VectorData(
        "digits",
        train=images[train],
        valid=None,
        test=images[test],
        image_shape=(8, 8),
        train_labels=labels[train],
        test_labels=labels[test],
    )
