"""Data set loaders (kept out of the model files). torchvision/torchaudio are imported lazily."""
from .binarized_mnist import load_binarized_mnist
from .digits import load_digits_binarised
from .fashion_mnist import load_fashion_mnist
from .files import DataDir, DataError
from .mnist import load_mnist
from .shapes3d import load_3dshapes
from .svhn import load_svhn
from .vector_data import VectorData

IMAGE_DATASETS = {
    "digits": load_digits_binarised,
    "binarized_mnist": load_binarized_mnist,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
}

# 32x32 / 64x64 colour images for the convolutional MFCVAE; kept out of IMAGE_DATASETS (the VAE's)
COLOUR_IMAGE_DATASETS = {"svhn": load_svhn, "3dshapes": load_3dshapes}

__all__ = ["COLOUR_IMAGE_DATASETS", "IMAGE_DATASETS", "DataDir", "DataError", "VectorData", "load_3dshapes", "load_binarized_mnist", "load_digits_binarised", "load_fashion_mnist", "load_mnist", "load_svhn"]
