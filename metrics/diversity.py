"""Single-set diversity metrics: the Vendi score and the mean pairwise distance.

All maths runs in float64 on the CPU: the inputs are small `[N, F]` feature tables (N images), and the
Vendi score takes the entropy of eigenvalues, where float32 round-off would show in the result.
"""
from __future__ import annotations

import torch

from ._inputs import feature_matrix

_DIAGONAL_TOLERANCE = 1e-4
_SYMMETRY_TOLERANCE = 1e-6


def unit_rows(features: torch.Tensor) -> torch.Tensor:
    """Scale every row of `features` `[N, F]` to unit length; returns `[N, F + 1]`.

    A zero row (e.g. an all-black image's pixels) has no direction, so it is given its own extra
    axis instead: zero rows are then identical to each other (similarity 1) and unrelated to every
    other row (similarity 0). That keeps the cosine kernel positive semi-definite and NaN-free.
    """
    norms = torch.linalg.vector_norm(features, dim=1, keepdim=True)
    is_zero_row = norms == 0
    directions = features / torch.where(is_zero_row, torch.ones_like(norms), norms)
    return torch.cat([directions, is_zero_row.to(features.dtype)], dim=1)


def cosine_similarity_matrix(features) -> torch.Tensor:
    """Cosine similarity of every pair of rows of `features` `[N, F]`; returns float64 `[N, N]`.

    Values lie in [-1, 1] with ones on the diagonal (see `unit_rows` for all-zero rows).
    """
    directions = unit_rows(feature_matrix(features, min_samples=1))
    similarity = directions @ directions.T
    return similarity.clamp(-1.0, 1.0).fill_diagonal_(1.0)


def rbf_similarity_matrix(features) -> torch.Tensor:
    """Gaussian similarity `exp(-|x_i - x_j|^2 / h)` of the rows of `features` `[N, F]`; `[N, N]`.

    The bandwidth `h` is the median squared distance between distinct rows (median heuristic), so
    the result does not depend on the scale of the features. If all rows coincide, every similarity
    is 1.
    """
    matrix = feature_matrix(features)
    squared_distances = _pairwise_l2(matrix).square()
    bandwidth = torch.quantile(_distinct_pairs(squared_distances), 0.5)
    if bandwidth == 0:
        return torch.ones_like(squared_distances)
    return torch.exp(-squared_distances / bandwidth)


_SIMILARITY_KERNELS = {"cosine": cosine_similarity_matrix, "rbf": rbf_similarity_matrix}


def vendi_score_from_similarity(similarity) -> float:
    """Vendi score of a precomputed similarity matrix `[N, N]` (symmetric, ones on the diagonal).

    `exp(-sum_i lambda_i log lambda_i)` over the eigenvalues `lambda_i` of `K / N`: the "effective
    number of distinct images", 1 when all N are alike and N when all are unrelated. Eigenvalues are
    taken in float64; tiny negative ones from round-off are treated as 0.
    """
    matrix = feature_matrix(similarity, name="similarity matrix")
    sample_count = matrix.shape[0]
    _check_similarity_matrix(matrix)
    eigenvalues = torch.linalg.eigvalsh(matrix / sample_count)
    positive = eigenvalues[eigenvalues > 0]
    entropy = -(positive * positive.log()).sum()
    return float(entropy.exp())


def vendi_score(features, kernel: str = "cosine") -> float:
    """Vendi score of the rows of `features` `[N, F]`, N >= 2: from 1 (all alike) to N (all different).

    `kernel` is "cosine" (default; see `cosine_similarity_matrix`) or "rbf" (Gaussian with a
    median-heuristic bandwidth; see `rbf_similarity_matrix`).
    """
    if kernel not in _SIMILARITY_KERNELS:
        raise ValueError(f"Unknown Vendi kernel {kernel!r}; choose one of {sorted(_SIMILARITY_KERNELS)}.")
    matrix = feature_matrix(features)
    return vendi_score_from_similarity(_SIMILARITY_KERNELS[kernel](matrix))


def mean_pairwise_distance(features, metric: str = "l2") -> float:
    """Mean distance over the N(N-1)/2 distinct pairs of rows of `features` `[N, F]`, N >= 2.

    `metric` is "l2" (Euclidean, in feature units) or "cosine" (1 - cosine similarity, in [0, 2]).
    """
    matrix = feature_matrix(features)
    if metric == "l2":
        distances = _pairwise_l2(matrix)
    elif metric == "cosine":
        distances = 1.0 - cosine_similarity_matrix(matrix)
    else:
        raise ValueError(f"Unknown distance {metric!r}; choose 'l2' or 'cosine'.")
    return float(_distinct_pairs(distances).mean())


def _pairwise_l2(matrix: torch.Tensor) -> torch.Tensor:
    """Euclidean distances `[N, N]` between the rows of `matrix`, computed from differences.

    The matrix-product shortcut `|x|^2 + |y|^2 - 2xy` loses all precision on large-norm features.
    """
    return torch.cdist(matrix, matrix, compute_mode="donot_use_mm_for_euclid_dist")


def _distinct_pairs(square: torch.Tensor) -> torch.Tensor:
    """The strictly upper-triangular entries of a square `[N, N]` matrix, as a flat vector."""
    rows, cols = torch.triu_indices(square.shape[0], square.shape[0], offset=1)
    return square[rows, cols]


def _check_similarity_matrix(matrix: torch.Tensor) -> None:
    rows, cols = matrix.shape
    if rows != cols:
        raise ValueError(f"A similarity matrix must be square; got shape {(rows, cols)}.")
    if not torch.allclose(matrix, matrix.T, atol=_SYMMETRY_TOLERANCE):
        raise ValueError("A similarity matrix must be symmetric (K[i, j] == K[j, i]).")
    if not torch.allclose(matrix.diagonal(), torch.ones(rows, dtype=matrix.dtype), atol=_DIAGONAL_TOLERANCE):
        raise ValueError("A similarity matrix must have ones on its diagonal (every image is identical to itself).")
