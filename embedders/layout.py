"""Layout embedders: fixed weighted averages over image regions (thirds, halves, diagonals).

Each embedder here is a set of K weight maps `[K, H, W]` built for the latent's own size; the
features are the weighted sums of every channel under every map, `[N, C, H, W] -> [N, C*K]`
(channel-major: the K values of channel 0 first). Region boundaries fall at fractional positions,
so any resolution works: a pixel cut by a boundary counts for each side in proportion to its area.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from .base import Embedder, cast_like

# (first band, second band) pairs whose difference the rule-of-thirds embedder reports
_THIRDS_CONTRASTS = ((0, 1), (1, 2), (0, 2))


def band_weights(length: int, bands: int) -> Tensor:
    """Area weights `[bands, length]` (float64) that average a 1-D profile over equal fractional bands.

    Band k covers `[k * length / bands, (k + 1) * length / bands)` in pixel units and pixel i covers
    `[i, i + 1)`; the weight is their overlap divided by the band width, so every row sums to 1.
    Float64 keeps the fractional boundaries exact enough that the rows sum to 1 to ~1e-15.
    """
    band_width = length / bands
    edges = torch.arange(bands + 1, dtype=torch.float64) * band_width
    pixel_starts = torch.arange(length, dtype=torch.float64)
    overlap = torch.minimum(edges[1:, None], pixel_starts + 1) - torch.maximum(edges[:-1, None], pixel_starts)
    return overlap.clamp(min=0) / band_width


def column_band_maps(height: int, width: int, bands: int) -> Tensor:
    """Maps `[bands, H, W]` that average the image over vertical bands (left to right)."""
    return band_weights(width, bands)[:, None, :].expand(bands, height, width) / height


def row_band_maps(height: int, width: int, bands: int) -> Tensor:
    """Maps `[bands, H, W]` that average the image over horizontal bands (top to bottom)."""
    return band_weights(height, bands)[:, :, None].expand(bands, height, width) / width


class WeightMapEmbedder(Embedder):
    """Features are the sums of each channel under K fixed weight maps: `[N, C, H, W] -> [N, C*K]`."""

    map_count: ClassVar[int]

    @abstractmethod
    def weight_maps(self, height: int, width: int) -> Tensor:
        """The `map_count` weight maps `[K, H, W]` (float64) for latents of this size."""

    def embed(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        maps = cast_like(self.weight_maps(*latents.shape[-2:]), latents)
        return torch.einsum("nchw,khw->nck", latents, maps).flatten(1)

    def feature_size(self, channels: int, height: int, width: int) -> int:
        return channels * self.map_count


class RuleOfThirdsEmbedder(WeightMapEmbedder):
    """Per channel: the means of the three vertical and three horizontal thirds, and their contrasts.

    Output `[N, C*12]`; per channel: left, centre, right column means; top, middle, bottom row means;
    then left-centre, centre-right, left-right, top-middle, middle-bottom, top-bottom differences.
    Needs latents of at least 3x3.
    """

    description = ("Rule-of-thirds composition: what sits in the left, centre and right thirds and the top, "
                   "middle and bottom thirds.")
    title = "rule of thirds"
    map_count = 12

    def __init__(self) -> None:
        super().__init__(minimum_size=3)

    def weight_maps(self, height: int, width: int) -> Tensor:
        columns = column_band_maps(height, width, 3)
        rows = row_band_maps(height, width, 3)
        return torch.cat([columns, rows, _band_contrasts(columns), _band_contrasts(rows)])


def _band_contrasts(band_maps: Tensor) -> Tensor:
    """Differences `[3, H, W]` between the three band maps `[3, H, W]`, in `_THIRDS_CONTRASTS` order."""
    return torch.stack([band_maps[first] - band_maps[second] for first, second in _THIRDS_CONTRASTS])


class EdgesEmbedder(WeightMapEmbedder):
    """Per channel: mean differences between opposite half-planes of the image.

    Output `[N, C*4]`; per channel: left minus right half, top minus bottom half, upper-right minus
    lower-left triangle and upper-left minus lower-right triangle (the diagonals run corner to corner;
    a pixel belongs to the side its centre is on, pixels centred on a diagonal to neither).
    Needs latents of at least 2x2.
    """

    description = ("Light and colour gradients across the image: left against right, top against bottom, "
                   "and along both diagonals.")
    title = "edges"
    map_count = 4

    def __init__(self) -> None:
        super().__init__(minimum_size=2)

    def weight_maps(self, height: int, width: int) -> Tensor:
        columns = column_band_maps(height, width, 2)
        rows = row_band_maps(height, width, 2)
        main_side, anti_side = _diagonal_sides(height, width)
        return torch.stack([
            columns[0] - columns[1],
            rows[0] - rows[1],
            _half_plane_contrast(main_side),
            _half_plane_contrast(-anti_side),
        ])


def _diagonal_sides(height: int, width: int) -> tuple[Tensor, Tensor]:
    """Integer maps `[H, W]` whose signs say on which side of each diagonal every pixel centre lies.

    With the centre of pixel (y, x) at `u = (x + 1/2) / W`, `v = (y + 1/2) / H`, the main diagonal
    is `u = v` (positive above it, upper right) and the anti-diagonal `u + v = 1` (positive below it,
    lower right). Both are scaled by `2 H W` so that the test is exact integer arithmetic.
    """
    column_term = (2 * torch.arange(width) + 1)[None, :] * height
    row_term = (2 * torch.arange(height) + 1)[:, None] * width
    return column_term - row_term, column_term + row_term - 2 * height * width


def _half_plane_contrast(side: Tensor) -> Tensor:
    """Weights `[H, W]` (float64) giving the mean over `side > 0` minus the mean over `side < 0`."""
    positive = (side > 0).double()
    negative = (side < 0).double()
    return positive / positive.sum() - negative / negative.sum()
