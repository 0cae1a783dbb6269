"""Frechet distance between Gaussians fitted to two feature sets (the FID formula, any features).

    d^2 = |mu_a - mu_b|^2 + tr(C_a) + tr(C_b) - 2 tr( (C_a^1/2 C_b C_a^1/2)^1/2 )

This is the squared 2-Wasserstein distance between the two Gaussians, the quantity FID reports.
The matrix square root is taken of the symmetric positive semi-definite product
`C_a^1/2 C_b C_a^1/2` by eigendecomposition (its trace equals that of `(C_a C_b)^1/2`), which stays
real and stable where `scipy.linalg.sqrtm(C_a @ C_b)` of the non-symmetric product can return
complex noise. All maths in float64.

Shrinkage: with N samples the covariance of F features has rank at most N - 1, so for N <= F it is
singular and a poor estimate. By default ("auto") such a covariance is replaced by the Ledoit-Wolf
estimate `(1 - s) C + s (tr(C) / F) I`, a blend with a scaled identity of the same trace, with the
intensity `s` in [0, 1] chosen by the Ledoit-Wolf (2004) formula. The intensities used are reported
in `FrechetResult`, so a shrunk distance is never mistaken for a plain one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._inputs import feature_matrix


@dataclass(frozen=True)
class FrechetResult:
    """A Frechet distance and the covariance shrinkage each set needed (0.0 = none)."""

    distance: float
    shrinkage_a: float
    shrinkage_b: float

    @property
    def shrunk(self) -> bool:
        """True when either covariance was shrunk, i.e. the distance is not the plain FID formula."""
        return self.shrinkage_a > 0 or self.shrinkage_b > 0


def frechet_distance(features_a, features_b, *, shrinkage: str | float | None = "auto") -> FrechetResult:
    """Frechet distance between feature sets `features_a` `[N, F]` and `features_b` `[M, F]`.

    `shrinkage`: "auto" (default) shrinks a set's covariance only when it is singular (N <= F);
    a float in [0, 1] applies that intensity to both sets; None never shrinks (a singular
    covariance is still handled exactly, only estimated poorly).

    Raises ValueError when a set has fewer than 2 samples or the two feature sizes differ.
    """
    matrix_a = feature_matrix(features_a, name="the generated set")
    matrix_b = feature_matrix(features_b, name="the reference set")
    if matrix_a.shape[1] != matrix_b.shape[1]:
        raise ValueError(
            f"Both sets need the same features: the generated set has {matrix_a.shape[1]} per image, "
            f"the reference set {matrix_b.shape[1]}. Use the same feature extractor for both."
        )
    covariance_a, shrinkage_a = _covariance(matrix_a, shrinkage)
    covariance_b, shrinkage_b = _covariance(matrix_b, shrinkage)
    mean_gap = matrix_a.mean(dim=0) - matrix_b.mean(dim=0)
    distance = (
        mean_gap.square().sum()
        + covariance_a.trace()
        + covariance_b.trace()
        - 2.0 * _trace_sqrt_product(covariance_a, covariance_b)
    )
    return FrechetResult(float(distance.clamp_min(0.0)), shrinkage_a, shrinkage_b)


def ledoit_wolf_shrinkage(features) -> float:
    """Ledoit-Wolf (2004) shrinkage intensity in [0, 1] for the covariance of `features` `[N, F]`.

    The optimal weight `s` of the scaled identity in `(1 - s) C + s mu I` (mu = tr(C) / F) under
    the Frobenius loss, estimated from the samples; 0 when the covariance is already a multiple
    of the identity or all samples coincide.
    """
    centred = _centred(feature_matrix(features))
    sample_count, feature_count = centred.shape
    covariance = centred.T @ centred / sample_count
    mean_variance = covariance.trace() / feature_count
    identity = torch.eye(feature_count, dtype=centred.dtype)
    dispersion = (covariance - mean_variance * identity).square().sum() / feature_count
    if dispersion == 0:
        return 0.0
    fourth_moment = centred.square().sum(dim=1).square().sum() / sample_count
    error_excess = fourth_moment - covariance.square().sum()
    # Exactly 0 for two samples; keep round-off from reporting a shrinkage of 1e-16.
    if error_excess <= fourth_moment * torch.finfo(centred.dtype).eps * feature_count:
        return 0.0
    estimation_error = error_excess / (sample_count * feature_count)
    return float(torch.clamp(estimation_error / dispersion, 0.0, 1.0))


def _covariance(matrix: torch.Tensor, shrinkage: str | float | None) -> tuple[torch.Tensor, float]:
    """Unbiased covariance `[F, F]` of `matrix` `[N, F]`, shrunk as `shrinkage` asks, and the intensity used."""
    centred = _centred(matrix)
    sample_count, feature_count = centred.shape
    covariance = centred.T @ centred / (sample_count - 1)
    intensity = _shrinkage_intensity(matrix, shrinkage)
    if intensity == 0:
        return covariance, 0.0
    mean_variance = covariance.trace() / feature_count
    identity = torch.eye(feature_count, dtype=covariance.dtype)
    return (1.0 - intensity) * covariance + intensity * mean_variance * identity, intensity


def _shrinkage_intensity(matrix: torch.Tensor, shrinkage: str | float | None) -> float:
    if shrinkage is None:
        return 0.0
    if shrinkage == "auto":
        sample_count, feature_count = matrix.shape
        return ledoit_wolf_shrinkage(matrix) if sample_count <= feature_count else 0.0
    if isinstance(shrinkage, (int, float)) and 0.0 <= shrinkage <= 1.0:
        return float(shrinkage)
    raise ValueError(f"shrinkage must be 'auto', None or a number from 0 to 1; got {shrinkage!r}.")


def _centred(matrix: torch.Tensor) -> torch.Tensor:
    return matrix - matrix.mean(dim=0, keepdim=True)


def _trace_sqrt_product(covariance_a: torch.Tensor, covariance_b: torch.Tensor) -> torch.Tensor:
    """tr((C_a C_b)^1/2) as tr((C_a^1/2 C_b C_a^1/2)^1/2) for symmetric PSD `[F, F]` inputs."""
    root_a = _psd_sqrt(covariance_a)
    product = root_a @ covariance_b @ root_a
    eigenvalues = torch.linalg.eigvalsh((product + product.T) / 2)
    return _without_round_off(eigenvalues).sqrt().sum()


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix `[F, F]`."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * _without_round_off(eigenvalues).sqrt()) @ eigenvectors.T


def _without_round_off(eigenvalues: torch.Tensor) -> torch.Tensor:
    """PSD eigenvalues with those at round-off level (|lambda| <= F eps max|lambda|) set to exactly 0.

    A singular covariance has eigenvalues that are 0 in exact arithmetic but come out as +-1e-16;
    their square roots (~1e-8) would otherwise add noise far above float64 precision.
    """
    cutoff = eigenvalues.abs().max() * eigenvalues.numel() * torch.finfo(eigenvalues.dtype).eps
    return torch.where(eigenvalues > cutoff, eigenvalues, torch.zeros_like(eigenvalues))
