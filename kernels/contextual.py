"""Contextual repulsion (Dahary et al.): push the token streams of a batch apart inside a transformer.

Each sample's stream of tokens ``[T, D]`` (text tokens by default) is flattened to one feature row; the
batch ``[N, T*D]`` is moved up the gradient of its log-Vendi entropy under the cosine kernel
(``kernels/vendi.py``) for a few small steps.

Portable step size. The cosine kernel sees only the direction of each row, so the entropy gradient is
tangent to the sphere of radius ``|x_i|`` and scales like ``1 / |x_i|``: a raw step ``eta * dH/dx``
moves a row by an angle ``eta * |dH/dx_i| / |x_i|``, which depends on the model's activation scale and on
T*D (likely why the paper's raw step sizes range from 5e2 to 8e9 across models). This module steps along
``|x_i|^2 dH/dx_i`` instead (the gradient on the unit sphere, carried back to the row's own length), so
``step_size`` is an angle in radians per unit of entropy slope, fixed by the batch's cosine geometry
alone, the same on every model, width and prompt length.

Also here, because they are pure: which blocks to patch and the sigma window.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .similarity import safe_row_norms
from .vendi import entropy_gram_gradient


@dataclass(frozen=True)
class ContextualSettings:
    """What the user chose on the Contextual Repulsion node.

    step_size: radians per unit of entropy slope per iteration (see the module docstring); 0 = off.
    iterations: ascent steps per patched block and model call.
    start, end: the window ``[start, end)`` as fractions of the sampling schedule (0 = first step).
    """

    step_size: float
    iterations: int = 1
    start: float = 0.0
    end: float = 0.1

    def __post_init__(self) -> None:
        if self.step_size < 0:
            raise ValueError(f"the step size must be 0 (off) or positive, got {self.step_size}")
        if self.iterations < 1:
            raise ValueError(f"contextual repulsion needs at least one iteration, got {self.iterations}")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"the schedule window needs 0 <= start <= end <= 1, got start={self.start}, "
                             f"end={self.end}")

    @property
    def enabled(self) -> bool:
        return self.step_size > 0 and self.end > self.start


def entropy_ascent_step(features: Tensor, step_size: float) -> Tensor:
    """The displacement ``[N, F]`` (float32) of one ascent step of the log-Vendi entropy of ``features``.

    ``step_size * |x_i|^2 * dH/dx_i`` per row: row i turns by ``step_size * |dH/dz_i|`` radians, where
    ``dH/dz_i`` is the entropy's slope on the unit sphere (below 0.7, see the tests). Zero rows and a
    single row do not move.

    Cost: every row of the step is a combination of the rows of ``features``, ``step = M @ features``
    with an ``N x N`` matrix M that depends on the Gram matrix alone. So one iteration is one Gram matrix
    and one N x N mixing of the rows (float64: near-identical streams differ in the last digits of
    float32), however long the rows are.
    """
    rows = features.double()
    return (_ascent_mixing(rows @ rows.T, safe_row_norms(rows), step_size) @ rows).float()


def _ascent_mixing(gram: Tensor, norms: Tensor, step_size: float) -> Tensor:
    """M ``[N, N]`` with ``step = M @ rows``, from the Gram matrix ``[N, N]`` and the row norms ``[N, 1]``
    (+inf for zero rows).

    With ``z_j = x_j / |x_j|`` and cosine matrix C: ``dH/dz_i = sum_j U_ij z_j`` with ``U = 2 dH/dC``;
    its tangent part removes ``(dH/dz_i . z_i) z_i = (U C)_ii z_i``; the step is
    ``step_size * |x_i| * tangent_i``.
    """
    count = gram.shape[0]
    if count < 2:
        return torch.zeros_like(gram)
    inverse_norms = 1 / norms
    cosines = gram * inverse_norms * inverse_norms.T
    eigenvalues, eigenvectors = torch.linalg.eigh(cosines / count)
    unit_coefficients = 2 * entropy_gram_gradient(eigenvalues, eigenvectors, count)
    tangent_coefficients = unit_coefficients - torch.diag((unit_coefficients * cosines).sum(dim=1))
    row_lengths = torch.where(torch.isinf(norms), torch.zeros_like(norms), norms)
    return step_size * row_lengths * tangent_coefficients * inverse_norms.T


def repel_streams(streams: Tensor, settings: ContextualSettings) -> Tensor:
    """``streams`` ``[N, ...]`` (one sample per row, e.g. ``[N, T, D]`` tokens) after
    ``settings.iterations`` entropy ascent steps, in the input's shape and dtype. The maths runs in
    float32 (the eigen-part in float64, see ``log_vendi_gradient``)."""
    features = streams.flatten(1).float()
    for _ in range(settings.iterations):
        features = features + entropy_ascent_step(features, settings.step_size)
    return features.view(streams.shape).to(streams.dtype)


def select_blocks(block_count: int, first_fraction: float, last_fraction: float) -> list[int]:
    """Indices of the blocks whose centre ``(i + 1/2) / block_count`` lies in ``[first, last)``.

    Fractions make one setting portable across depths: ``[1/3, 2/3)`` is the middle third, blocks 6-12
    of Flux's 19 double blocks and 13-24 of SD3.5-Large's 38.
    """
    if not 0.0 <= first_fraction <= last_fraction <= 1.0:
        raise ValueError(f"the block range needs 0 <= block_start <= block_end <= 1, got "
                         f"block_start={first_fraction}, block_end={last_fraction}")
    return [index for index in range(block_count)
            if first_fraction <= (index + 0.5) / block_count < last_fraction]


