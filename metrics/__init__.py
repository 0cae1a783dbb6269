"""Diversity metrics and their figures: pure torch/numpy/Pillow, no ComfyUI imports.

Feature tables are `[N, F]` (one row per image, torch or numpy); image batches follow ComfyUI's
IMAGE layout `[N, H, W, 3]` in 0..1; latent or feature-map batches are `[N, C, H, W]`.
"""
from .diversity import (
    cosine_similarity_matrix,
    mean_pairwise_distance,
    rbf_similarity_matrix,
    vendi_score,
    vendi_score_from_similarity,
)
from .features import location_features, pixel_features, style_features
from .frechet import FrechetResult, frechet_distance, ledoit_wolf_shrinkage
from .groups import GroupedMetric, class_entropy, coverage, grouped
from .plots import colour_map, pca_2d, projection_plot, report_figure, similarity_heatmap, to_image_tensor
from .report import compare_reports, diversity_report, format_report

__all__ = [
    "FrechetResult",
    "GroupedMetric",
    "class_entropy",
    "colour_map",
    "compare_reports",
    "cosine_similarity_matrix",
    "coverage",
    "diversity_report",
    "format_report",
    "frechet_distance",
    "grouped",
    "ledoit_wolf_shrinkage",
    "location_features",
    "mean_pairwise_distance",
    "pca_2d",
    "pixel_features",
    "projection_plot",
    "rbf_similarity_matrix",
    "report_figure",
    "similarity_heatmap",
    "style_features",
    "to_image_tensor",
    "vendi_score",
    "vendi_score_from_similarity",
]
