"""Where a guide's per-datapoint parameters come from: an encoder, or a free table."""
import torch
from torch import nn


class AmortisedParams(nn.Module):
    """params = head(encoder(data)): one network shared by all data points."""

    amortised = True

    def __init__(self, encoder: nn.Module, encoder_dim: int, param_dim: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder_dim, param_dim)

    def forward(self, data: dict, idx: torch.Tensor | None) -> torch.Tensor:
        return self.head(self.encoder(**data))


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
