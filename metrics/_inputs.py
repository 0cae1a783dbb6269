"""Input checks shared by the metrics: turn what a node hands over into a clean float64 matrix."""
from __future__ import annotations

import torch


def feature_matrix(features, *, name: str = "features", min_samples: int = 2) -> torch.Tensor:
    """Return `features` as a float64 CPU tensor `[N, F]`, refusing what no metric can use.

    float64 because the metrics take eigenvalues and square roots of near-singular matrices, where
    float32 round-off is of the same size as the differences being measured.

    Raises ValueError when the input is not 2-D, holds NaN/inf, has no feature columns or fewer
    than `min_samples` rows.
    """
    matrix = torch.as_tensor(features)
    if matrix.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D [images, features] table; got shape {tuple(matrix.shape)}. "
            "Flatten each image's features into one row first."
        )
    sample_count, feature_count = matrix.shape
    if feature_count == 0:
        raise ValueError(f"{name} has no feature columns (shape {tuple(matrix.shape)}).")
    if sample_count < min_samples:
        raise ValueError(
            f"{name} needs at least {min_samples} images to measure diversity; got {sample_count}. "
            "Use a batch of 2 or more images."
        )
    matrix = matrix.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the upstream image/model.")
    return matrix


def label_list(groups) -> list:
    """One plain Python label per image, from a list, tuple, numpy array or 1-D tensor."""
    return groups.tolist() if hasattr(groups, "tolist") else list(groups)
