"""The common shape of every embedder: a differentiable map from a latent batch to feature vectors.

Inference mode: ComfyUI runs nodes under `torch.inference_mode()`, and tensors created there (weights
included) can never take part in autograd. Build embedders under `torch.inference_mode(False)` (the
registry's `build_embedder` and the style-embedder loader do this for you), and run them under
`torch.inference_mode(False)` plus `torch.enable_grad()` on latents cloned outside inference mode.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn


class Embedder(nn.Module, ABC):
    """A differentiable feature map of a latent batch: `[N, C, H, W] -> [N, F]`.

    Callers use `forward(latents, sigma)`; it checks the latents and casts them to the compute dtype
    (float32, or float64 when the latents are float64, for gradient checks), then calls `embed`.

    Attributes:
        latent_channels: the only channel count C this embedder accepts, or None for any.
        minimum_size: the smallest latent height and width it accepts, in latent pixels.
        description: one sentence saying what the embedder makes diverse (class level).
        title: a short human name used in error messages (class level).

    `feature_map(latents, sigma)` gives the features as a spatial map `[N, K, h, w]` (used by the Gram
    "style" wrapper). Embedders without spatial structure return their feature vector as a map of
    K = F channels at a single position.
    """

    description: ClassVar[str] = ""
    title: ClassVar[str] = "embedder"

    def __init__(self, latent_channels: int | None = None, minimum_size: int = 1) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.minimum_size = minimum_size

    def forward(self, latents: Tensor, sigma: Tensor | None = None) -> Tensor:
        """Features `[N, F]` of latents `[N, C, H, W]`; `sigma` `[N]` is the noise level (most ignore it)."""
        return self.embed(self.prepare(latents), sigma)

    def feature_map(self, latents: Tensor, sigma: Tensor | None = None) -> Tensor:
        """Features of latents `[N, C, H, W]` as a spatial map `[N, K, h, w]`."""
        return self.embed_map(self.prepare(latents), sigma)

    def prepare(self, latents: Tensor) -> Tensor:
        """Check that `latents` is a batch this embedder accepts and cast it to the compute dtype."""
        if latents.dim() != 4:
            raise ValueError(
                f"The {self.title} embedder expects latents shaped [batch, channels, height, width]; "
                f"got a tensor shaped {tuple(latents.shape)}."
            )
        if not latents.is_floating_point():
            raise ValueError(f"The {self.title} embedder expects floating-point latents, got {latents.dtype}.")
        channels, height, width = latents.shape[1:]
        if self.latent_channels is not None and channels != self.latent_channels:
            raise ValueError(
                f"The {self.title} embedder was built for {self.latent_channels}-channel latents "
                f"but received {channels}-channel latents; build it for this model's latents."
            )
        if min(height, width) < self.minimum_size:
            raise ValueError(
                f"The {self.title} embedder needs latents of at least {self.minimum_size}x{self.minimum_size} "
                f"(height x width); got {height}x{width}. Use a larger image or another embedder."
            )
        return latents.to(torch.promote_types(latents.dtype, torch.float32))

    @abstractmethod
    def embed(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        """Features `[N, F]` of checked latents `[N, C, H, W]` in the compute dtype."""

    def embed_map(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        """Features of checked latents as a map `[N, K, h, w]`; by default the vector at one position."""
        return self.embed(latents, sigma)[:, :, None, None]

    @abstractmethod
    def feature_size(self, channels: int, height: int, width: int) -> int:
        """F, the length of the feature vector for latents of this channel count and size."""

    def feature_map_channels(self, channels: int, height: int, width: int) -> int:
        """K, the number of channels of `feature_map` for latents of this channel count and size."""
        return self.feature_size(channels, height, width)


def cast_like(weight: Tensor, latents: Tensor) -> Tensor:
    """`weight` on the device and in the dtype of `latents` (a no-op when they already match)."""
    return weight.to(device=latents.device, dtype=latents.dtype)


def halve_resolution(feature_map: Tensor, pool: Callable[[Tensor, tuple[int, int]], Tensor]) -> Tensor:
    """Pool `[N, K, h, w]` to `[N, K, ceil(h/2), ceil(w/2)]` with an adaptive pooling function.

    Adaptive pooling covers every pixel of odd-sized maps and leaves a 1-pixel side as it is, so a
    stack of these works at any resolution down to 1x1.
    """
    height, width = feature_map.shape[-2:]
    return pool(feature_map, ((height + 1) // 2, (width + 1) // 2))


def check_whole_number(what: str, value: int, minimum: int | None = None) -> int:
    """`value` if it is an int (not a bool) of at least `minimum`, else a ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" of at least {minimum}"
        raise ValueError(f"The {what} must be a whole number{bound}, got {value!r}.")
    return value


def check_grid_size(grid_size: int) -> int:
    """`grid_size` if it is a usable pooled-grid side (an int >= 1), else a ValueError."""
    return check_whole_number("grid size", grid_size, minimum=1)
