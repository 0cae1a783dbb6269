"""What flows through an EMBEDDER socket: a recipe, built into an embedder once sampling starts.

The latent's channel count and the model's latent format (for the latent-to-RGB factors) are only known
inside the sampler, so nodes pass recipes, and `Repulsion` builds each one lazily, outside inference mode.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Protocol

import torch

from ..embedders import GramEmbedder, StyleClassifier, StyleEmbedderError, StyleProbabilities, build_embedder

LOG = logging.getLogger("particle_repulsion")


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


# What a style embedder hands the repulsion: its class probabilities (the default) or its 64 features.
STYLE_OUTPUTS = ("class_probabilities", "features")


@dataclass(frozen=True, eq=False)
class StyleEmbedderRecipe:
    """A trained style classifier (loaded from a file, or fresh from the trainer) used as the embedder.

    `label` names it in messages (its file name). `output` is one of `STYLE_OUTPUTS`: class
    probabilities (for the collision objective: do two images share a style?) or the classifier's 64
    features (the thesis's choice). Its latent channels are checked against the model's when sampling
    starts; a different latent format with the same channel count (e.g. SDXL latents for an
    SD1.5-trained classifier) is allowed with a warning, since the values mean something else.
    """

    classifier: StyleClassifier
    label: str
    output: str = STYLE_OUTPUTS[0]

    def __post_init__(self) -> None:
        if self.output not in STYLE_OUTPUTS:
            raise ValueError(f"A style embedder's output is one of {', '.join(STYLE_OUTPUTS)}, got {self.output!r}.")

    def build(self, latent_channels: int, latent_format) -> torch.nn.Module:
        self._check_channels(latent_channels)
        self._warn_if_other_latent_format(latent_format)
        with torch.inference_mode(False):
            classifier = copy.deepcopy(self.classifier)  # the caller moves it to its device; ours stays put
            return StyleProbabilities(classifier) if self.output == "class_probabilities" else classifier

    def _check_channels(self, latent_channels: int) -> None:
        trained_channels = self.classifier.latent_channels
        if trained_channels != latent_channels:
            raise StyleEmbedderError(
                f"The style embedder {self.label} was trained on {trained_channels}-channel latents "
                f"({self.trained_latent_format}), but this model makes {latent_channels}-channel latents. "
                "Train a style embedder with this model (Train Style Embedder) or pick another embedder."
            )

    def _warn_if_other_latent_format(self, latent_format) -> None:
        model_format = latent_format_name(latent_format)
        if model_format is not None and model_format != self.trained_latent_format:
            LOG.warning("Particle Repulsion: the style embedder %s was trained on %s latents but the model's "
                        "are %s; its style features may mean little here.", self.label,
                        self.trained_latent_format, model_format)

    @property
    def trained_latent_format(self) -> str:
        return self.classifier.metadata.get("latent_format", "unknown latent format")

    def summary(self) -> str:
        """A few lines for the artist: styles, latents, noise range and validation accuracy against chance."""
        classifier, metadata = self.classifier, self.classifier.metadata
        lines = [
            f"{self.label}: style classifier of {len(classifier.class_names)} styles "
            f"({', '.join(classifier.class_names)}).",
            f"Reads {classifier.latent_channels}-channel {self.trained_latent_format} latents; "
            f"trained at noise levels sigma {classifier.sigma_min:.4g} to {classifier.sigma_max:.4g}.",
        ]
        if "validation_accuracy" in metadata:
            lines.append(f"Validation accuracy {percent(metadata['validation_accuracy'])} on noisy latents, "
                         f"{percent(metadata.get('clean_validation_accuracy'))} on clean ones "
                         f"(chance {percent(1 / len(classifier.class_names))}).")
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class GramEmbedderRecipe:
    """Any recipe wrapped in the Gram ("style") embedder: feature co-occurrences, position-free."""

    inner: EmbedderRecipe

    @property
    def label(self) -> str:
        return f"{self.inner.label} (Gram)"

    def build(self, latent_channels: int, latent_format) -> torch.nn.Module:
        with torch.inference_mode(False):
            return GramEmbedder(self.inner.build(latent_channels, latent_format))


def latent_format_name(latent_format) -> str | None:
    """ComfyUI's name for a model's latent format ("SD15", "SDXL", "SD3", "Flux", ...), None if unknown."""
    return None if latent_format is None else type(latent_format).__name__


def percent(fraction) -> str:
    """A fraction (number or numeric string) as "93.8%", or "unknown"."""
    try:
        return f"{100 * float(fraction):.1f}%"
    except (TypeError, ValueError):
        return "unknown"
