"""Feature transforms for the diversity metrics, on image or latent batches.

The thesis measures diversity in two hand-made spaces besides Inception features: "location"
(where things are: the channel-averaged spatial map) and "style" (which channels fire together:
the Gram matrix of early features). `pixel_features` is the no-model fallback for ComfyUI IMAGE
batches. Every transform returns float32 `[N, F]`, one row per image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def location_features(batch: torch.Tensor, grid: int = 8) -> torch.Tensor:
    """Channel-averaged spatial layout of `batch` `[N, C, H, W]`, pooled to `grid` x `grid`.

    Returns `[N, grid * grid]`: the mean over channels, average-pooled to a coarse grid (so any
    resolution gives the same feature size) and flattened row by row.
    """
    spatial = _spatial_batch(batch, "location features")
    if grid < 1:
        raise ValueError(f"The location grid must be at least 1 cell wide; got {grid}.")
    channel_mean = spatial.mean(dim=1, keepdim=True)
    return F.adaptive_avg_pool2d(channel_mean, grid).flatten(start_dim=1)


def style_features(feature_map: torch.Tensor) -> torch.Tensor:
    """Channel Gram matrix of `feature_map` `[N, C, H, W]`, upper triangle; `[N, C (C + 1) / 2]`.

    `G[c, d] = sum_{h, w} f[c, h, w] f[d, h, w] / (H W)`: how strongly channels c and d fire
    together, whatever the layout. The diagonal is included; the lower triangle repeats the upper.
    """
    spatial = _spatial_batch(feature_map, "style features")
    batch_size, channels, height, width = spatial.shape
    flat = spatial.reshape(batch_size, channels, height * width)
    gram = flat @ flat.transpose(1, 2) / (height * width)
    rows, cols = torch.triu_indices(channels, channels, device=gram.device)
    return gram[:, rows, cols]


def pixel_features(images: torch.Tensor, size: int = 16) -> torch.Tensor:
    """Downscaled pixels of a ComfyUI IMAGE batch `[N, H, W, 3]` (channels last, values 0..1).

    Each image is area-averaged to `size` x `size` and flattened to `[N, 3 * size * size]`.
    Needs no model, so it always works; it sees colour and layout, not content.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            "Expected a ComfyUI IMAGE batch shaped [images, height, width, 3] (colour channels last); "
            f"got {tuple(images.shape)}."
        )
    if size < 1:
        raise ValueError(f"The downscaled size must be at least 1 pixel; got {size}.")
    channels_first = images.detach().float().permute(0, 3, 1, 2)
    return F.adaptive_avg_pool2d(channels_first, size).flatten(start_dim=1)


def _spatial_batch(batch: torch.Tensor, purpose: str) -> torch.Tensor:
    """`batch` as float32 `[N, C, H, W]`, or a ValueError naming `purpose`."""
    if batch.ndim != 4:
        raise ValueError(
            f"{purpose} need a [images, channels, height, width] batch; got shape {tuple(batch.shape)}."
        )
    return batch.detach().float()
