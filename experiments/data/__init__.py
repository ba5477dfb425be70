"""Data set loaders (kept out of the model files). torchvision/torchaudio are imported lazily."""
from .binarized_mnist import load_binarized_mnist
from .digits import load_digits_binarised
from .fashion_mnist import load_fashion_mnist
from .files import DataDir, DataError
from .vector_data import VectorData
from .mnist import load_mnist

IMAGE_DATASETS = {
    "digits": load_digits_binarised,
    "binarized_mnist": load_binarized_mnist,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
}

__all__ = ["IMAGE_DATASETS", "DataDir", "DataError", "VectorData", "load_binarized_mnist", "load_digits_binarised", "load_fashion_mnist", "load_mnist"]
