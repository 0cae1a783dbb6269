"""What flows through an EMBEDDER socket: a recipe, built into an embedder once sampling starts.

The latent's channel count and the model's latent format (for the latent-to-RGB factors) are only known
inside the sampler, so nodes pass recipes, and `Repulsion` builds each one lazily, outside inference mode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..embedders import build_embedder


class EmbedderRecipe(Protocol):
    label: str

    def build(self, latent_channels: int, latent_format) -> torch.nn.Module:
        """An embedder `[N, C, H, W] (, sigma [N]) -> [N, F]` for `latent_channels` = C."""


@dataclass(frozen=True)
class BuiltinEmbedderRecipe:
    """One of the pack's built-in embedders with its options."""

    name: str = "latent"
    seed: int = 0
    grid_size: int = 4

    @property
    def label(self) -> str:
        return self.name

    def build(self, latent_channels: int, latent_format) -> torch.nn.Module:
        return build_embedder(self.name, latent_channels, seed=self.seed, grid_size=self.grid_size,
                              latent_rgb_factors=getattr(latent_format, "latent_rgb_factors", None),
                              latent_rgb_bias=getattr(latent_format, "latent_rgb_factors_bias", None))
