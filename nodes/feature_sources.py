"""Feature tables for the Diversity nodes: one row of numbers per image, from the user's own models.

A feature space is a *source* (what turns an image into numbers) and an *aspect* (which part of that
to compare):

    source       input it reads   whole vector                      spatial map (location / style)
    clip_vision  IMAGE            CLIP image embedding              penultimate patch tokens as a grid
    embedder     LATENT           the EMBEDDER's output             the embedder's feature map
    pixels       IMAGE            pixels area-averaged to 16 x 16   the RGB image
    latent       LATENT           the flattened latent              the latent

"location" is the thesis's channel-averaged spatial map on an 8 x 8 grid (where things are), "style" the
Gram matrix of the map's channels (which features occur together, wherever they are). Nothing is
downloaded: the models are the CLIP_VISION and EMBEDDER the user connects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch

from ..metrics import location_features, pixel_features, style_features

SOURCES = ("auto", "clip_vision", "embedder", "pixels", "latent")
ASPECTS = ("whole", "location", "style")
LOCATION_GRID = 8

_SOURCE_DESCRIPTIONS = {
    "clip_vision": "CLIP vision",
    "embedder": "the {label} embedder on the latents",
    "pixels": "downscaled pixels",
    "latent": "the raw latents",
}
_ASPECT_DESCRIPTIONS = {
    "whole": "whole feature vector",
    "location": f"location: channel-averaged layout on an {LOCATION_GRID}x{LOCATION_GRID} grid",
    "style": "style: Gram matrix of the feature channels",
}
_MAP_TRANSFORMS = {"location": partial(location_features, grid=LOCATION_GRID), "style": style_features}
# Sources compared position by position: two sets are only comparable at the same image size.
_SIZE_SENSITIVE_SOURCES = ("pixels", "latent")


@dataclass(frozen=True)
class Batch:
    """One set of images to measure, as an IMAGE batch `[N, H, W, 3]`, a LATENT batch `[N, C, H, W]` or both.

    `name` says which input it came from (e.g. "the batch", "the reference") in error messages.
    """

    name: str
    images: torch.Tensor | None = None
    latents: torch.Tensor | None = None

    @classmethod
    def from_inputs(cls, name: str, images: torch.Tensor | None, latent: dict | None) -> "Batch | None":
        """The batch from a node's IMAGE and LATENT inputs, or None when neither is connected."""
        if images is None and latent is None:
            return None
        latents = None if latent is None else latent["samples"]
        if images is not None and latents is not None and images.shape[0] != latents.shape[0]:
            raise ValueError(
                f"For {name} the images ({images.shape[0]}) and the latent ({latents.shape[0]}) hold different "
                "numbers of pictures; connect the same batch to both (e.g. the latent and its VAE Decode)."
            )
        return cls(name, images, latents)

    @property
    def size(self) -> int:
        """N, the number of images."""
        return (self.images if self.images is not None else self.latents).shape[0]

    def require_images(self, source: str) -> torch.Tensor:
        if self.images is None:
            raise ValueError(f"{source} features are computed from images, but {self.name} has no IMAGE "
                             "connected; connect one (e.g. through VAE Decode).")
        return self.images

    def require_latents(self, source: str) -> torch.Tensor:
        if self.latents is None:
            raise ValueError(f"{source} features are computed from latents, but {self.name} has no LATENT "
                             "connected; connect the sampler's LATENT output.")
        return self.latents

    def spatial_size(self, source: str) -> tuple[int, int]:
        """(height, width) of the pixels or latents that `source` reads, in their own units."""
        if source == "pixels":
            return tuple(self.require_images(source).shape[1:3])
        return tuple(self.require_latents(source).shape[-2:])


@dataclass(frozen=True)
class FeatureSpace:
    """A resolved feature space (`source` is never "auto") with the models it needs.

    `clip_vision` is ComfyUI's CLIP_VISION object, `embedder` an EMBEDDER recipe (see
    `embedder_recipes`), `latent_format` the model's latent format handed to the recipe (or None).
    """

    source: str
    aspect: str
    chosen_automatically: bool = False
    clip_vision: object = None
    embedder: object = None
    latent_format: object = None

    def describe(self) -> str:
        """One line for the report, e.g. "CLIP vision, whole feature vector (chosen automatically)"."""
        source = _SOURCE_DESCRIPTIONS[self.source].format(label=getattr(self.embedder, "label", "connected"))
        how = " (chosen automatically)" if self.chosen_automatically else ""
        return f"{source}, {_ASPECT_DESCRIPTIONS[self.aspect]}{how}"

    def features(self, batch: Batch) -> torch.Tensor:
        """Float32 `[N, F]` feature table of `batch`, one row per image."""
        if self.aspect == "whole":
            vectors = self._vectors(batch)
        else:
            vectors = _MAP_TRANSFORMS[self.aspect](self._spatial_map(batch))
        return vectors.detach().float().cpu()

    def check_comparable(self, batch: Batch, other: Batch) -> None:
        """Refuse two sets that this feature space cannot compare: different sizes for pixels/latents."""
        if self.source not in _SIZE_SENSITIVE_SOURCES:
            return
        size, other_size = batch.spatial_size(self.source), other.spatial_size(self.source)
        if size != other_size:
            unit = "pixels" if self.source == "pixels" else "latent pixels"
            raise ValueError(
                f"{self.source} features compare images position by position, but {batch.name} is "
                f"{size[1]}x{size[0]} {unit} and {other.name} is {other_size[1]}x{other_size[0]}. "
                "Resize one set to the other's size (e.g. with an Upscale Image node), or use clip_vision "
                "or an embedder, which do not depend on the size."
            )

    def _vectors(self, batch: Batch) -> torch.Tensor:
        if self.source == "clip_vision":
            return self._encode_with_clip(batch)["image_embeds"]
        if self.source == "embedder":
            embedder, latents = self._embedder_and_latents(batch)
            return embedder(latents)
        if self.source == "pixels":
            return pixel_features(batch.require_images(self.source))
        return batch.require_latents(self.source).flatten(start_dim=1)

    def _spatial_map(self, batch: Batch) -> torch.Tensor:
        """`[N, K, h, w]` map of the source for the location and style aspects."""
        if self.source == "clip_vision":
            return tokens_as_grid(self._encode_with_clip(batch)["penultimate_hidden_states"])
        if self.source == "embedder":
            return self._embedder_map(batch)
        if self.source == "pixels":
            return batch.require_images(self.source).movedim(-1, 1)
        return batch.require_latents(self.source)

    def _encode_with_clip(self, batch: Batch):
        return self.clip_vision.encode_image(batch.require_images(self.source))

    def _embedder_and_latents(self, batch: Batch) -> tuple[torch.nn.Module, torch.Tensor]:
        latents = batch.require_latents(self.source)
        return embedder_from_recipe(self.embedder, latents, self.latent_format), latents

    def _embedder_map(self, batch: Batch) -> torch.Tensor:
        embedder, latents = self._embedder_and_latents(batch)
        if not hasattr(embedder, "feature_map"):
            raise ValueError("This embedder gives only a feature vector, no spatial map, so it has no "
                             "location or style aspect; set aspect to whole.")
        return embedder.feature_map(latents)


def choose_feature_space(source: str, aspect: str, batch: Batch, clip_vision=None, embedder=None,
                         latent_format=None) -> FeatureSpace:
    """Resolve `source` ("auto" or one of `SOURCES`) for `batch` and check its model is connected.

    "auto" takes the most meaningful source available: CLIP vision on images, then the embedder on
    latents, then pixels, then the raw latents.
    """
    if aspect not in ASPECTS:
        raise ValueError(f"Unknown aspect {aspect!r}; choose one of {', '.join(ASPECTS)}.")
    chosen_automatically = source == "auto"
    if chosen_automatically:
        source = _automatic_source(batch, clip_vision, embedder)
    if source not in _SOURCE_DESCRIPTIONS:
        raise ValueError(f"Unknown feature source {source!r}; choose one of {', '.join(SOURCES)}.")
    if source == "clip_vision" and clip_vision is None:
        raise ValueError("features is set to clip_vision but no CLIP_VISION model is connected; load one with "
                         "Load CLIP Vision, or choose another feature source.")
    if source == "embedder" and embedder is None:
        raise ValueError("features is set to embedder but no EMBEDDER is connected; add a Repulsion Embedder "
                         "node, or choose another feature source.")
    return FeatureSpace(source, aspect, chosen_automatically, clip_vision, embedder, latent_format)


def _automatic_source(batch: Batch, clip_vision, embedder) -> str:
    if clip_vision is not None and batch.images is not None:
        return "clip_vision"
    if embedder is not None and batch.latents is not None:
        return "embedder"
    return "pixels" if batch.images is not None else "latent"


def embedder_from_recipe(recipe, latents: torch.Tensor, latent_format) -> torch.nn.Module:
    """Build an EMBEDDER recipe for `latents` `[N, C, H, W]`, outside inference mode like the sampler does.

    The node's latent input carries no model, so `latent_format` is None unless a MODEL is connected;
    when building then fails, the message says so (latent_rgb, for one, needs the model's format).
    """
    try:
        with torch.inference_mode(False):
            return recipe.build(latents.shape[1], latent_format).to(latents.device)
    except ValueError as error:
        if latent_format is None:
            raise ValueError(f"{error} (No MODEL is connected to this node's optional `model` input; if the "
                             "embedder needs the model's latent format, connect the model that made these "
                             "latents.)") from error
        raise


def tokens_as_grid(tokens: torch.Tensor) -> torch.Tensor:
    """Vision-transformer tokens `[N, T, D]` as a patch grid `[N, D, s, s]`, s = floor(sqrt(T)).

    The T - s^2 tokens in front of the patches (the class token, and register tokens in some
    encoders) are dropped; CLIP ViT-L/14 at 224 pixels has 1 + 16 x 16 tokens.
    """
    if tokens.ndim != 3:
        raise ValueError(f"Expected vision-transformer tokens shaped [images, tokens, width]; got "
                         f"{tuple(tokens.shape)}.")
    side = math.isqrt(tokens.shape[1])
    patches = tokens[:, tokens.shape[1] - side * side:]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
