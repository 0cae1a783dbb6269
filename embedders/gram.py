"""The Gram ("style") wrapper: which features occur together, wherever they are in the image."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Embedder

# Largest inner channel count K; the output has K (K + 1) / 2 values (32,896 at K = 256).
MAX_GRAM_CHANNELS = 256


class GramEmbedder(Embedder):
    """Upper triangle (with the diagonal) of the Gram matrix of an inner embedder's feature map.

    Definition: take the inner embedder's `feature_map`, `[N, K, h, w]`, as `[N, K, P]` with
    `P = h * w` positions; the Gram matrix is `G = f f^T / P`, `[N, K, K]`, and the features are its
    upper triangle read row by row, `[N, K (K + 1) / 2]`. For inner embedders with a spatial map this
    is the classic style descriptor (channel co-activations averaged over positions, so it ignores
    where things are); for those without one (channel mean, rule of thirds, edges) the map is the
    feature vector at one position and `G` is its outer product. At most `MAX_GRAM_CHANNELS` channels.
    """

    description = "Style: which features appear together, wherever they are in the image (Gram matrix)."

    def __init__(self, inner: Embedder) -> None:
        super().__init__(latent_channels=inner.latent_channels, minimum_size=inner.minimum_size)
        self.inner = inner

    @property
    def title(self) -> str:
        return f"{self.inner.title} (Gram)"

    def embed(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        features = self.inner.embed_map(latents, sigma).flatten(2)
        channels, positions = features.shape[1:]
        _check_gram_channels(channels, self.inner.title)
        gram = features @ features.transpose(1, 2) / positions
        rows, columns = torch.triu_indices(channels, channels, device=latents.device)
        return gram[:, rows, columns]

    def feature_size(self, channels: int, height: int, width: int) -> int:
        gram_channels = self.inner.feature_map_channels(channels, height, width)
        _check_gram_channels(gram_channels, self.inner.title)
        return gram_channels * (gram_channels + 1) // 2


def _check_gram_channels(channels: int, inner_title: str) -> None:
    if channels > MAX_GRAM_CHANNELS:
        raise ValueError(
            f"The Gram (style) wrapper needs at most {MAX_GRAM_CHANNELS} feature channels, but the "
            f"{inner_title} embedder gives {channels} here; wrap a smaller embedder."
        )
