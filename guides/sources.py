"""Where a guide's per-datapoint parameters come from: an encoder, or a free table."""
from collections.abc import Sequence

import torch
from torch import nn


class AmortisedParams(nn.Module):
    """params = head(encoder(data)): one network shared by all data points."""

    amortised = True

    def __init__(self, encoder: nn.Module, encoder_dim: int, param_dims: Sequence[int]):
        super().__init__()
        self.encoder = encoder
        feature_dims = getattr(encoder, "feature_dims", None)
        if feature_dims is not None and len(feature_dims) == len(param_dims):
            self.head = BlockHead(feature_dims, param_dims)
        else:
            self.head = nn.Linear(encoder_dim, sum(param_dims))

    def forward(self, data: dict, idx: torch.Tensor | None) -> torch.Tensor:
        return self.head(self.encoder(**data))


class BlockHead(nn.Module):
    """One linear head per site, each reading only its own slice of the features: a ladder
    encoder (``encoder.feature_dims``, one entry per site) gives site s its own rung."""

    def __init__(self, feature_dims: Sequence[int], param_dims: Sequence[int]):
        super().__init__()
        self.feature_dims = list(feature_dims)
        self.heads = nn.ModuleList(nn.Linear(f, p) for f, p in zip(feature_dims, param_dims))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        chunks = features.split(self.feature_dims, dim=-1)
        return torch.cat([head(chunk) for head, chunk in zip(self.heads, chunks)], dim=-1)


class LocalParams(nn.Module):
    """params = table[idx]: free parameters per training data point (no amortisation)."""

    amortised = False

    def __init__(self, num_points: int, initial_row: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(initial_row.detach().expand(num_points, -1).clone())

    def forward(self, data: dict, idx: torch.Tensor | None) -> torch.Tensor:
        if idx is None:
            raise ValueError("a local guide needs the data point ids: call it with idx=...")
        return self.table[idx]

    @torch.no_grad()
    def set_rows(self, idx: torch.Tensor, params: torch.Tensor) -> None:
        """Start the given points from other parameters (e.g. the amortised guide's output)."""
        self.table[idx] = params.to(self.table)
