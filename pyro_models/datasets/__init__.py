"""Data set loaders (kept out of the model files). torchvision/torchaudio are imported lazily."""
from pyro_models.datasets.binarized_mnist import load_binarized_mnist
from pyro_models.datasets.cifar10 import load_cifar10
from pyro_models.datasets.digits import load_digits_binarised
from pyro_models.datasets.fashion_mnist import load_fashion_mnist, load_fashion_mnist_static
from pyro_models.datasets.files import DataDir, DataError
from pyro_models.datasets.mnist import load_mnist
from pyro_models.datasets.shapes3d import load_3dshapes
from pyro_models.datasets.svhn import load_svhn
from pyro_models.datasets.vector_data import VectorData

IMAGE_DATASETS = {
    "digits": load_digits_binarised,
    "binarized_mnist": load_binarized_mnist,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "fashion_mnist_static": load_fashion_mnist_static,  # binarised once at 0.5, as Cremer et al. (2018)
    "cifar10": load_cifar10,  # colour, statically binarised: the VAE's convolutional networks (Cremer et al. 2018)
}

# 32x32 / 64x64 colour images for the convolutional MFCVAE; kept out of IMAGE_DATASETS (the VAE's)
COLOUR_IMAGE_DATASETS = {"svhn": load_svhn, "3dshapes": load_3dshapes}

__all__ = ["COLOUR_IMAGE_DATASETS", "IMAGE_DATASETS", "DataDir", "DataError", "VectorData", "load_3dshapes", "load_binarized_mnist",
           "load_cifar10", "load_digits_binarised", "load_fashion_mnist", "load_fashion_mnist_static", "load_mnist", "load_svhn"]
