"""Embedders that read the latent almost directly: all of it, its channel means, or a pooled grid."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import Embedder, check_grid_size


class LatentEmbedder(Embedder):
    """The latent itself, flattened: `[N, C, H, W] -> [N, C*H*W]` (the thesis's plain repulsion)."""

    description = "Everything at once: the whole latent, pixel by pixel."
    title = "latent"

    def embed(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        return latents.flatten(1)

    def embed_map(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        return latents

    def feature_size(self, channels: int, height: int, width: int) -> int:
        return channels * height * width

    def feature_map_channels(self, channels: int, height: int, width: int) -> int:
        return channels


class ChannelMeanEmbedder(Embedder):
    """The mean of each latent channel over the image: `[N, C, H, W] -> [N, C]`."""

    description = "Overall colour and brightness: the average of each latent channel."
    title = "channel mean"

    def embed(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        return latents.mean(dim=(2, 3))

    def feature_size(self, channels: int, height: int, width: int) -> int:
        return channels


class PooledGridEmbedder(Embedder):
    """The latent average-pooled to a `grid_size x grid_size` grid: `[N, C, H, W] -> [N, C*g*g]`.

    Adaptive pooling, so any resolution works; latents smaller than the grid are repeated into it.
    """

    description = "Coarse composition: where colours and shapes sit on a small grid."
    title = "pooled grid"

    def __init__(self, grid_size: int = 4) -> None:
        super().__init__()
        self.grid_size = check_grid_size(grid_size)

    def embed(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        return self.embed_map(latents, sigma).flatten(1)

    def embed_map(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        return F.adaptive_avg_pool2d(latents, self.grid_size)

    def feature_size(self, channels: int, height: int, width: int) -> int:
        return channels * self.grid_size**2

    def feature_map_channels(self, channels: int, height: int, width: int) -> int:
        return channels
