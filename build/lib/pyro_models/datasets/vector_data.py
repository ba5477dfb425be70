"""The container the vector (and flattened image) data set loaders return."""
from dataclasses import dataclass, field

import torch


@dataclass
class VectorData:
    """Data points as rows (flattened images in [0, 1] for image sets), with optional labels.

    Colour images are flattened channel-first, ``image_shape`` (C, H, W). Large image sets may
    keep raw uint8 pixels (0-255) instead of floats (3dshapes: 5.9 GB rather than 23 GB);
    convert batches with ``x.float() / 255`` when ``x.dtype == torch.uint8``. Labels are (N,) class
    indices, or (N, F) for F factors, named in ``notes["label_names"]``.

    ``dynamic_binarisation``: train batches are resampled as Bernoulli(pixel intensity) at every
    step; the evaluation splits were binarised once with a fixed seed, so they stay comparable.
    """

    name: str
    train: torch.Tensor
    valid: torch.Tensor | None
    test: torch.Tensor
    image_shape: tuple[int, ...] | None
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    dynamic_binarisation: bool = False
    notes: dict = field(default_factory=dict)

    @property
    def data_dim(self) -> int:
        return self.train.shape[1]


def evenly_spaced(n: int, total: int) -> torch.Tensor:
    """Indices of ``n`` points spread evenly over ``total`` (all of them when n is 0 or at least
    ``total``). A subset of a split must not be its first n points: binarised MNIST's test split
    is ordered by class, so its first 1000 images are all zeros."""
    if not n or n >= total:
        return torch.arange(total)
    return torch.linspace(0, total - 1, n).round().long()


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Pixels as floats in [0, 1]: uint8 images (kept compact in memory) are scaled here."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x


def binarise_fixed(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One stochastic binarisation with its own generator (leaves the global RNG alone)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(images, generator=generator)
