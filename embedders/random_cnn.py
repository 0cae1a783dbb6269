"""A small convolutional network with fixed random weights: cheap texture and local-structure features."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Embedder, cast_like, check_grid_size, halve_resolution

CONV_WIDTHS = (32, 32, 32)


class RandomCNNEmbedder(Embedder):
    """Three 3x3 convolutions with SiLU and halving average pools, then an adaptive pool to a grid.

    `[N, C, H, W] -> [N, 32 * grid_size**2]`. The weights are drawn once, at construction, from a
    `torch.Generator` seeded with `seed` (He-normal scale, no biases), so one seed gives the same
    features in every call and every build; they are buffers, never trained. SiLU rather than ReLU
    keeps the features smooth, so their gradient (the repulsion) does not jump. Works at any
    resolution down to 1x1.
    """

    description = "Texture and local structure as seen by a small convolutional network with fixed random weights."
    title = "random CNN"

    def __init__(self, latent_channels: int, *, seed: int = 0, grid_size: int = 4) -> None:
        super().__init__(latent_channels=latent_channels)
        self.grid_size = check_grid_size(grid_size)
        generator = torch.Generator().manual_seed(seed)
        in_channels = (latent_channels,) + CONV_WIDTHS[:-1]
        for index, (width, fan_in_channels) in enumerate(zip(CONV_WIDTHS, in_channels)):
            self.register_buffer(f"conv_weight_{index}", _he_normal(width, fan_in_channels, generator))

    def conv_weights(self) -> list[Tensor]:
        """The convolution weights `[out, in, 3, 3]`, first layer first."""
        return [getattr(self, f"conv_weight_{index}") for index in range(len(CONV_WIDTHS))]

    def embed(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        return F.adaptive_avg_pool2d(self.embed_map(latents, sigma), self.grid_size).flatten(1)

    def embed_map(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        """The last convolution's activations `[N, 32, ceil(H/4), ceil(W/4)]`."""
        activations = latents
        for index, weight in enumerate(self.conv_weights()):
            if index > 0:
                activations = halve_resolution(activations, F.adaptive_avg_pool2d)
            activations = F.silu(F.conv2d(activations, cast_like(weight, latents), padding=1))
        return activations

    def feature_size(self, channels: int, height: int, width: int) -> int:
        return CONV_WIDTHS[-1] * self.grid_size**2

    def feature_map_channels(self, channels: int, height: int, width: int) -> int:
        return CONV_WIDTHS[-1]


def _he_normal(out_channels: int, in_channels: int, generator: torch.Generator) -> Tensor:
    """A 3x3 convolution weight `[out, in, 3, 3]` with He-normal scale `sqrt(2 / fan_in)`."""
    fan_in = in_channels * 9
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=generator)
    return weight * math.sqrt(2.0 / fan_in)
