"""Log-Vendi entropy of a batch under the cosine kernel, and its closed-form gradient.

    H = -tr(A log A),   A = K / N,   K = Z Z^T,   Z = the rows of the features scaled to unit norm

``exp(H)`` is the Vendi score, the effective number of distinct samples: H = 0 when all rows point the
same way, H = log N when they are mutually orthogonal. Contextual repulsion moves features up dH.

The eigen-maths runs in float64: dH/dK involves log of eigenvalues that are often tiny, and float32
eigendecompositions of nearly rank-deficient matrices lose them to round-off.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .similarity import safe_row_norms, unit_rows


def log_vendi_entropy(features: Tensor) -> Tensor:
    """H (nats, scalar, the features' dtype) of ``features`` ``[N, F]``; zero rows count as similar to
    nothing. Differentiable by autograd (``log_vendi_gradient`` is the faster closed form)."""
    _check_features(features)
    eigenvalues = torch.linalg.eigvalsh(_normalised_gram(unit_rows(features.to(torch.float64))))
    # Eigenvalues <= 0 (round-off of a rank-deficient K) are replaced by 1, whose term 1 log 1 is 0: the
    # convention 0 log 0 = 0 without a NaN gradient.
    kept = torch.where(eigenvalues > 0, eigenvalues, torch.ones_like(eigenvalues))
    return -(kept * torch.log(kept)).sum().to(features.dtype)


def log_vendi_gradient(features: Tensor) -> Tensor:
    """dH/dfeatures ``[N, F]`` in the features' dtype, through one N x N eigendecomposition (no autograd).

    A single row, or a row of zero norm, gets a zero gradient.
    """
    _check_features(features)
    count = features.shape[0]
    if count < 2:
        return torch.zeros_like(features)
    rows = features.to(torch.float64)
    units = unit_rows(rows)
    eigenvalues, eigenvectors = torch.linalg.eigh(_normalised_gram(units))
    gram_gradient = entropy_gram_gradient(eigenvalues, eigenvectors, count)
    unit_gradient = 2 * gram_gradient @ units  # K = Z Z^T with a symmetric dH/dK
    return _through_normalisation(unit_gradient, rows, units).to(features.dtype)


def _normalised_gram(units: Tensor) -> Tensor:
    """``A = Z Z^T / N`` ``[N, N]`` for unit rows ``Z`` ``[N, F]``."""
    return units @ units.T / units.shape[0]


def entropy_gram_gradient(eigenvalues: Tensor, eigenvectors: Tensor, count: int) -> Tensor:
    """``dH/dK = -(1/N) (log(K/N) + I)`` ``[N, N]`` from the spectrum of ``K/N``.

    Null directions of K (eigenvalue at round-off level) get 0: their log diverges, but they are
    orthogonal to every row of Z, so they never reach the features.
    """
    round_off = count * torch.finfo(torch.float64).eps
    kept = eigenvalues > round_off
    slopes = torch.where(kept, torch.log(eigenvalues.clamp_min(round_off)) + 1, torch.zeros_like(eigenvalues))
    return -(eigenvectors * slopes) @ eigenvectors.T / count


def _through_normalisation(unit_gradient: Tensor, rows: Tensor, units: Tensor) -> Tensor:
    """Chain dH/dZ ``[N, F]`` through ``z = x / |x|``: ``(I - z z^T) dH/dz / |x|`` per row."""
    radial_part = (unit_gradient * units).sum(dim=1, keepdim=True) * units
    return (unit_gradient - radial_part) / safe_row_norms(rows)


def _check_features(features: Tensor) -> None:
    if features.ndim != 2:
        raise ValueError(f"the Vendi entropy needs a feature matrix [N, F], got shape {tuple(features.shape)}")
