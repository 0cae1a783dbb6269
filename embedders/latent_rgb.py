"""The latent seen as a rough RGB image through the model's linear preview factors, pooled to a grid."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Embedder, cast_like, check_grid_size

RGBFactors = Tensor | Sequence[Sequence[float]]


class LatentRGBEmbedder(Embedder):
    """Linear latent-to-RGB preview, average-pooled to a grid: `[N, C, H, W] -> [N, 3 * grid_size**2]`.

    `rgb = sum_c latents[c] * rgb_factors[c] + rgb_bias` per pixel, the same linear map ComfyUI uses
    for its fast previews (the caller passes the model's `latent_rgb_factors`, `[C, 3]`, and optional
    `latent_rgb_factors_bias`, `[3]`). The values are in the preview's own scale (roughly -1..1).
    """

    description = "Colour layout: the rough RGB preview of the image, averaged over a small grid."
    title = "latent RGB"

    def __init__(self, rgb_factors: RGBFactors, rgb_bias: Sequence[float] | Tensor | None = None,
                 *, grid_size: int = 4) -> None:
        factors = _as_float_table(rgb_factors, "latent-to-RGB factors")
        if factors.dim() != 2 or factors.shape[1] != 3 or factors.shape[0] < 1:
            raise ValueError(
                "The latent-to-RGB factors must be a table with one row of 3 numbers (R, G, B) per latent "
                f"channel; got shape {tuple(factors.shape)}."
            )
        bias = torch.zeros(3) if rgb_bias is None else _as_float_table(rgb_bias, "latent-to-RGB bias")
        if bias.shape != (3,):
            raise ValueError(f"The latent-to-RGB bias must be 3 numbers (R, G, B); got shape {tuple(bias.shape)}.")
        super().__init__(latent_channels=factors.shape[0])
        self.grid_size = check_grid_size(grid_size)
        self.register_buffer("rgb_factors", factors)
        self.register_buffer("rgb_bias", bias)

    def embed(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        return F.adaptive_avg_pool2d(self.embed_map(latents, sigma), self.grid_size).flatten(1)

    def embed_map(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        """The full-resolution RGB preview `[N, 3, H, W]`."""
        rgb = torch.einsum("nchw,ck->nkhw", latents, cast_like(self.rgb_factors, latents))
        return rgb + cast_like(self.rgb_bias, latents)[None, :, None, None]

    def feature_size(self, channels: int, height: int, width: int) -> int:
        return 3 * self.grid_size**2

    def feature_map_channels(self, channels: int, height: int, width: int) -> int:
        return 3


def _as_float_table(values: RGBFactors | Sequence[float], what: str) -> Tensor:
    """`values` as a finite float32 tensor (a detached copy), or a ValueError naming `what`."""
    try:
        table = torch.as_tensor(values, dtype=torch.float32).detach().clone()
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"The {what} must be numbers, got {values!r}.") from error
    if not torch.isfinite(table).all():
        raise ValueError(f"The {what} contain NaN or infinite values.")
    return table
