"""What the running ComfyUI's stock KSampler does to the LATENT around sampling, feature-detected.

Since ComfyUI 0.11 empty-latent nodes add a `downscale_ratio_spacial` key; the stock KSampler hands it to
`comfy.sample.fix_empty_latent_channels`, which then resizes an empty latent for models whose latent
format downscales by another ratio (Flux 2, Wan 2.2, HunyuanVideo 1.5, LTXV, ...), and drops the key
from its output. Older ComfyUI has neither. Whether the running ComfyUI does it is read from that helper's
signature, never from a version number, and the resizing itself is ComfyUI's own.
"""
from __future__ import annotations

import inspect
from functools import cache

import comfy.sample
import torch

DOWNSCALE_RATIO_KEY = "downscale_ratio_spacial"


@cache
def helper_takes_downscale_ratio() -> bool:
    """True when this ComfyUI's fix_empty_latent_channels accepts the latent's downscale ratio."""
    return DOWNSCALE_RATIO_KEY in inspect.signature(comfy.sample.fix_empty_latent_channels).parameters


def stock_latent_samples(model, latent: dict) -> torch.Tensor:
    """The latent's samples as the stock KSampler hands them to sampling (an empty latent fitted to the model)."""
    if helper_takes_downscale_ratio():
        return comfy.sample.fix_empty_latent_channels(model, latent["samples"], latent.get(DOWNSCALE_RATIO_KEY))
    return comfy.sample.fix_empty_latent_channels(model, latent["samples"])


def stock_sampler_output(latent: dict, samples: torch.Tensor) -> dict:
    """The LATENT the stock KSampler returns: the input's entries with `samples` replaced, minus the
    downscale ratio where the stock KSampler drops it."""
    output = {**latent, "samples": samples}
    if helper_takes_downscale_ratio():
        output.pop(DOWNSCALE_RATIO_KEY, None)
    return output
