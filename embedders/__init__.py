"""Embedders: differentiable feature maps `[N, C, H, W] -> [N, F]` of a latent batch (pure torch).

The repulsion measures how alike the samples of a batch are in one of these feature spaces. Build
them with `build_embedder(name, latent_channels, ...)` (names in `EMBEDDER_NAMES`), or load a trained
style classifier with `load_style_embedder(path, expected_channels)`, optionally wrapped in
`GramEmbedder` for a position-free "style" comparison.
"""
from .base import Embedder
from .basic import ChannelMeanEmbedder, LatentEmbedder, PooledGridEmbedder
from .gram import MAX_GRAM_CHANNELS, GramEmbedder
from .latent_rgb import LatentRGBEmbedder
from .layout import EdgesEmbedder, RuleOfThirdsEmbedder
from .random_cnn import RandomCNNEmbedder
from .registry import EMBEDDER_DESCRIPTIONS, EMBEDDER_NAMES, build_embedder
from .style_classifier import ARCHITECTURE_VERSION, StyleClassifier, StyleProbabilities
from .style_files import FORMAT_MARKER, StyleEmbedderError, load_style_embedder, save_style_embedder
from .style_training import EpochReport, TrainingInterrupted, train_style_classifier

__all__ = [
    "ARCHITECTURE_VERSION",
    "EMBEDDER_DESCRIPTIONS",
    "EMBEDDER_NAMES",
    "FORMAT_MARKER",
    "MAX_GRAM_CHANNELS",
    "ChannelMeanEmbedder",
    "EdgesEmbedder",
    "Embedder",
    "EpochReport",
    "GramEmbedder",
    "LatentEmbedder",
    "LatentRGBEmbedder",
    "PooledGridEmbedder",
    "RandomCNNEmbedder",
    "RuleOfThirdsEmbedder",
    "StyleClassifier",
    "StyleProbabilities",
    "StyleEmbedderError",
    "TrainingInterrupted",
    "build_embedder",
    "load_style_embedder",
    "save_style_embedder",
    "train_style_classifier",
]
