"""The embedders a node can offer by name, and `build_embedder` to make one."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .base import Embedder, check_grid_size, check_whole_number
from .basic import ChannelMeanEmbedder, LatentEmbedder, PooledGridEmbedder
from .gram import GramEmbedder
from .latent_rgb import LatentRGBEmbedder, RGBFactors
from .layout import EdgesEmbedder, RuleOfThirdsEmbedder
from .random_cnn import RandomCNNEmbedder


@dataclass(frozen=True)
class EmbedderOptions:
    """Everything `build_embedder` may pass on to an embedder's constructor."""

    latent_channels: int
    seed: int
    grid_size: int
    latent_rgb_factors: RGBFactors | None
    latent_rgb_bias: Sequence[float] | Tensor | None


@dataclass(frozen=True)
class _Entry:
    description: str
    build: Callable[[EmbedderOptions], Embedder]


def _build_latent_rgb(options: EmbedderOptions) -> Embedder:
    if options.latent_rgb_factors is None:
        raise ValueError(
            "The latent_rgb embedder needs the model's latent-to-RGB preview factors, and this model "
            "has none; pick another embedder."
        )
    embedder = LatentRGBEmbedder(options.latent_rgb_factors, options.latent_rgb_bias, grid_size=options.grid_size)
    if embedder.latent_channels != options.latent_channels:
        raise ValueError(
            f"The latent-to-RGB factors have {embedder.latent_channels} rows but the model makes "
            f"{options.latent_channels}-channel latents; they must come from the same model."
        )
    return embedder


def _build_random_cnn(options: EmbedderOptions) -> RandomCNNEmbedder:
    return RandomCNNEmbedder(options.latent_channels, seed=options.seed, grid_size=options.grid_size)


_REGISTRY: dict[str, _Entry] = {
    "latent": _Entry(LatentEmbedder.description, lambda options: LatentEmbedder()),
    "channel_mean": _Entry(ChannelMeanEmbedder.description, lambda options: ChannelMeanEmbedder()),
    "pooled_grid": _Entry(PooledGridEmbedder.description, lambda options: PooledGridEmbedder(options.grid_size)),
    "rule_of_thirds": _Entry(RuleOfThirdsEmbedder.description, lambda options: RuleOfThirdsEmbedder()),
    "edges": _Entry(EdgesEmbedder.description, lambda options: EdgesEmbedder()),
    "random_cnn": _Entry(RandomCNNEmbedder.description, _build_random_cnn),
    "random_cnn_gram": _Entry(
        "Texture style: which random-CNN features appear together, wherever they are (Gram matrix).",
        lambda options: GramEmbedder(_build_random_cnn(options)),
    ),
    "latent_rgb": _Entry(LatentRGBEmbedder.description, _build_latent_rgb),
}

# Drop-down order, "latent" first.
EMBEDDER_NAMES: tuple[str, ...] = tuple(_REGISTRY)

# One sentence per name saying what the embedder makes diverse (for tooltips).
EMBEDDER_DESCRIPTIONS: dict[str, str] = {name: entry.description for name, entry in _REGISTRY.items()}


def build_embedder(name: str, latent_channels: int, *, seed: int = 0, grid_size: int = 4,
                   latent_rgb_factors: RGBFactors | None = None,
                   latent_rgb_bias: Sequence[float] | Tensor | None = None) -> Embedder:
    """Build the embedder called `name` (one of `EMBEDDER_NAMES`) for `latent_channels`-channel latents.

    `seed` fixes the random CNN's weights; `grid_size` is the side of the pooled grid of the
    pooled-grid, random-CNN and latent-RGB embedders; `latent_rgb_factors` (`[C, 3]`) and
    `latent_rgb_bias` (`[3]`) are the model's preview factors, needed by "latent_rgb" only.
    Construction runs under `torch.inference_mode(False)`, so the weights are ordinary tensors that
    support autograd even when this is called from a ComfyUI node (which runs in inference mode).
    Raises ValueError for an unknown name or an impossible option.
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"Unknown embedder {name!r}; choose one of: {', '.join(EMBEDDER_NAMES)}.")
    check_whole_number("latent channel count", latent_channels, minimum=1)
    check_whole_number("seed", seed)
    options = EmbedderOptions(latent_channels, seed, check_grid_size(grid_size), latent_rgb_factors, latent_rgb_bias)
    with torch.inference_mode(False):
        return entry.build(options)

