"""Convolutional ladder (VLAE-style) networks for MFCVAE on 32x32 and 64x64 images.

Same interface as ``ladder.py``'s MLP pair. Everything runs on a 32x32 grid: a 64x64 image is
first halved by a stem convolution (and the decoder doubles it back at the end), so both sizes
share one ladder.

Encoder, bottom-up: stride-2 convolutions h_0 (16x16) -> h_1 (8x8) -> ...; facet j's rung reads
h_j (one more stride-2 convolution, then a dense layer), so deeper facets see more abstract
features. Decoder, top-down: the deepest facet's z is projected to the deepest feature map and
upsampled by transposed convolutions; each lower facet's z is projected to the map of its level
and added as ``0.1 * fade_j * rung_j(z_j)`` before the upsampling, as in the MLP decoder.

Flattened images are channel-first, ``(..., C*H*W)``, and any number of leading dims is allowed.
"""
import math
from collections.abc import Sequence

import torch
from torch import nn

from pyro_models.mfcvae.ladder import MERGE_WEIGHT

CHANNELS = (32, 64, 128, 256)  # feature maps of level j (16x16, 8x8, 4x4, 2x2 on the 32x32 grid)
FEATURE_WIDTH = 256  # each encoder rung's output, the input of its facet's guide head
SIZES = (32, 64)
GRID = 32


def _check(image_shape: Sequence[int], num_facets: int) -> tuple[int, int]:
    """Returns (channels, number of stem halvings) or raises with what is supported."""
    if len(image_shape) != 3:
        raise ValueError(f"conv ladder needs image_shape (C, H, W), got {tuple(image_shape)}")
    c, h, w = image_shape
    if c not in (1, 3) or h != w or h not in SIZES:
        raise ValueError(
            f"conv ladder supports 1- or 3-channel square images of size {SIZES}, got (C, H, W) = {tuple(image_shape)}; "
            "use --architecture mlp for other shapes"
        )
    if not 1 <= num_facets <= len(CHANNELS):
        raise ValueError(f"conv ladder supports 1 to {len(CHANNELS)} facets, got {num_facets}")
    return c, {32: 0, 64: 1}[h]


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU())


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU())


def _side(level: int) -> int:
    """Side length of level j's feature map on the 32x32 grid."""
    return GRID // 2 ** (level + 1)


class ConvLadderEncoder(nn.Module):
    """Returns the rung features of all facets concatenated, ``(..., sum(feature_dims))``."""

    def __init__(self, image_shape: tuple[int, int, int], num_facets: int):
        super().__init__()
        channels, stem_halvings = _check(image_shape, num_facets)
        self.image_shape = tuple(image_shape)
        self.stem = nn.Sequential(*(_down(channels if i == 0 else CHANNELS[0], CHANNELS[0]) for i in range(stem_halvings)))
        first = CHANNELS[0] if stem_halvings else channels
        ins = [first, *CHANNELS[: num_facets - 1]]
        self.backbone = nn.ModuleList(_down(i, o) for i, o in zip(ins, CHANNELS[:num_facets]))
        self.rungs = nn.ModuleList(
            nn.Sequential(
                _down(CHANNELS[j], CHANNELS[j]),
                nn.Flatten(),
                nn.Linear(CHANNELS[j] * (_side(j) // 2) ** 2, FEATURE_WIDTH),
                nn.ReLU(),
            )
            for j in range(num_facets)
        )
        self.feature_dims = [FEATURE_WIDTH] * num_facets

    def forward(self, x: torch.Tensor, **unused) -> torch.Tensor:
        lead = x.shape[:-1]
        if x.shape[-1] != (size := math.prod(self.image_shape)):
            raise ValueError(f"conv ladder encoder expects flattened images of size {size}, got {x.shape[-1]}")
        h = self.stem(x.reshape(-1, *self.image_shape))
        features = []
        for layer, rung in zip(self.backbone, self.rungs):
            h = layer(h)
            features.append(rung(h))
        return torch.cat(features, dim=-1).reshape(*lead, -1)


class ConvLadderDecoder(nn.Module):
    """Logits of p(x | z_0..z_{J-1}), flattened channel-first: ``(..., C*H*W)``."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dims: Sequence[int]):
        super().__init__()
        num_facets = len(latent_dims)
        channels, stem_halvings = _check(image_shape, num_facets)
        self.image_shape = tuple(image_shape)
        self.map_shapes = [(CHANNELS[j], _side(j), _side(j)) for j in range(num_facets)]
        self.rungs = nn.ModuleList(
            nn.Sequential(nn.Linear(d, c * s * s), nn.ReLU()) for d, (c, s, _) in zip(latent_dims, self.map_shapes)
        )
        # block j upsamples level j's map to level j - 1's (block 0: to the 32x32 grid)
        outs = [CHANNELS[0], *CHANNELS[: num_facets - 1]]
        self.backbone = nn.ModuleList(_up(i, o) for i, o in zip(CHANNELS[:num_facets], outs))
        self.stem = nn.Sequential(*(_up(CHANNELS[0], CHANNELS[0]) for _ in range(stem_halvings)))
        self.out = nn.Conv2d(CHANNELS[0], channels, 3, padding=1)  # logits: no activation

    def forward(self, zs: Sequence[torch.Tensor], fade: Sequence[float] | None = None) -> torch.Tensor:
        lead = torch.broadcast_shapes(*(z.shape[:-1] for z in zs))
        zs = [z.expand(*lead, z.shape[-1]).reshape(-1, z.shape[-1]) for z in zs]
        top = len(zs) - 1
        h = self.backbone[top](self.rungs[top](zs[top]).view(-1, *self.map_shapes[top]))
        for j in reversed(range(top)):
            weight = MERGE_WEIGHT * (1.0 if fade is None else fade[j])
            if weight:  # a facet not yet faded in adds nothing (and costs nothing)
                h = h + weight * self.rungs[j](zs[j]).view(-1, *self.map_shapes[j])
            h = self.backbone[j](h)
        return self.out(self.stem(h)).reshape(*lead, -1)
