"""Fully connected ladder (VLAE-style) networks for MFCVAE: one rung per facet.

Encoder, bottom-up: x -> h_0 -> h_1 -> ...; facet j reads h_j, so deeper facets see more
abstract features. Decoder, top-down: the deepest facet's z starts the backbone and each lower
facet's z enters through its rung, added as ``0.1 * fade_j * rung_j(z_j)`` (the gated add of the
MFCVAE reference code; ``fade_j`` is progressive training's decoder fade-in, 0 -> 1).

Both act on any number of leading dimensions (particles in front of the batch).
"""
import itertools
from collections.abc import Sequence

import torch
from torch import nn

MERGE_WEIGHT = 0.1  # the reference code's gated add: upper + 0.1 * rung


def _dense(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU())


class MLPLadderEncoder(nn.Module):
    """Returns the rung features of all facets concatenated, ``(..., sum(feature_dims))``;
    ``feature_dims[j]`` is facet j's share, so a guide can give each facet its own head."""

    def __init__(self, data_dim: int, backbone: Sequence[int]):
        super().__init__()
        sizes = [data_dim, *backbone]
        self.backbone = nn.ModuleList(_dense(a, b) for a, b in itertools.pairwise(sizes))
        self.feature_dims = list(backbone)

    def forward(self, x: torch.Tensor, **unused) -> torch.Tensor:
        features, h = [], x
        for layer in self.backbone:
            h = layer(h)
            features.append(h)
        return torch.cat(features, dim=-1)


class MLPLadderDecoder(nn.Module):
    """Logits of p(x | z_0..z_{J-1}) for the ladder above.

    ``rungs[j]``: width of facet j's rung (z_j -> rungs[j]); ``backbone[j]``: width of the
    backbone layer after facet j has merged. A lower facet merges into the layer above it, so
    ``rungs[j] == backbone[j + 1]``.
    """

    def __init__(self, data_dim: int, latent_dims: Sequence[int], rungs: Sequence[int], backbone: Sequence[int]):
        super().__init__()
        num_facets = len(latent_dims)
        if not len(rungs) == len(backbone) == num_facets:
            raise ValueError(f"need one rung and one backbone width per facet ({num_facets}), got {rungs} and {backbone}")
        for j in range(num_facets - 1):
            if rungs[j] != backbone[j + 1]:
                raise ValueError(
                    f"facet {j}'s rung ({rungs[j]}) must match the backbone width above it ({backbone[j + 1]})"
                )
        self.rungs = nn.ModuleList(_dense(d, r) for d, r in zip(latent_dims, rungs))
        top = num_facets - 1
        inputs = [backbone[j + 1] if j < top else rungs[top] for j in range(num_facets)]
        self.backbone = nn.ModuleList(_dense(i, b) for i, b in zip(inputs, backbone))
        self.out = nn.Linear(backbone[0], data_dim)

    def forward(self, zs: Sequence[torch.Tensor], fade: Sequence[float] | None = None) -> torch.Tensor:
        top = len(zs) - 1
        h = self.backbone[top](self.rungs[top](zs[top]))
        for j in reversed(range(top)):
            weight = MERGE_WEIGHT * (1.0 if fade is None else fade[j])
            if weight:  # a facet not yet faded in adds nothing (and costs nothing)
                h = h + weight * self.rungs[j](zs[j])
            h = self.backbone[j](h)
        return self.out(h)
