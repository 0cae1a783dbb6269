"""Diversity objectives: how alike a batch of features is, as one differentiable number.

An objective maps the features ``[N, F]`` of a batch (a differentiable function of the particles) to a
scalar batch similarity ``S``; repulsion moves every particle down ``grad S``. Three are offered:

- ``KernelSum`` (the thesis's SVGD repulsive term): ``S = (1/N) sum_ij k(phi_i, stopgrad phi_j)``, with
  any kernel of ``kernels.similarity``. Radial kernels are flat where two samples coincide, so alike
  samples push each other weakly.
- ``LogVendiEntropy`` (the contextual paper's objective, DPP-like): ``S = -H``, ``H = -tr(A log A)``,
  ``A = K / N`` for the kernel matrix ``K``; ``exp(H)`` is the Vendi score. Its pull grows as samples
  become alike (a near-duplicate makes a small eigenvalue, whose log is steep), so it keeps separating
  them where a kernel sum goes flat.
- ``class collision``: a ``KernelSum`` with the ``CollisionKernel`` (``p . q`` on tempered class
  probabilities): the chance that two samples share a class.

Identical particles: the gradient of any symmetric objective treats exact duplicates alike, so it cannot
tell them apart. Kernel sums and collision leave duplicates where they are relative to each other (their
mutual force is exactly zero, never amplified round-off); the entropy claims to separate alike samples,
so it splits every group of duplicates along fixed, seeded feature directions (deterministic; the only
place where batch order matters).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from .similarity import Kernel, make_kernel
from .vendi import entropy_gram_gradient

OBJECTIVE_NAMES = ("kernel_sum", "log_vendi", "collision")

# Two feature rows closer than this, relative to the largest row norm, are the same sample up to
# float32 round-off.
_COINCIDENCE_TOLERANCE = 1e-6
_SPLIT_SEED = 0x5EED


@dataclass(frozen=True)
class BatchSimilarity:
    """What an objective says of one batch.

    value: ``S``, a scalar that repulsion decreases (differentiable with respect to the features).
    matrix: ``[N, N]`` detached pairwise similarities, for logging.
    """

    value: Tensor
    matrix: Tensor


class Objective(ABC):
    """How alike a batch of features is: ``objective(features [N, F]) -> BatchSimilarity``."""

    separates_duplicates: bool = False

    @abstractmethod
    def __call__(self, features: Tensor) -> BatchSimilarity:
        """``S`` and the pairwise similarities of ``features`` ``[N, F]`` (float32 or float64)."""

    def feature_gradient(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(dS/dfeatures [N, F], pairwise similarities [N, N])`` for ``features`` ``[N, F]``.

        ``features`` must require grad. A batch whose rows all coincide gets a zero gradient (nothing
        but round-off could tell them apart), unless the objective separates duplicates.
        """
        similarity = self(features)
        (gradient,) = torch.autograd.grad(similarity.value, features, retain_graph=True)
        groups = coincident_groups(features.detach())
        if self.separates_duplicates:
            split = split_directions(groups, features.shape, _typical_row_norm(gradient, groups))
            gradient = gradient + split.to(gradient.dtype)
        elif len(groups) == 1 and len(groups[0]) == features.shape[0]:
            gradient = torch.zeros_like(gradient)
        return gradient, similarity.matrix


@dataclass(frozen=True)
class KernelSum(Objective):
    """``S = (1/N) sum_ij k(phi_i, stopgrad phi_j)``: the SVGD repulsive term (self-pairs included)."""

    kernel: Kernel

    def __call__(self, features: Tensor) -> BatchSimilarity:
        matrix = self.kernel(features, features.detach())
        return BatchSimilarity(matrix.sum() / features.shape[0], matrix.detach())


@dataclass(frozen=True)
class LogVendiEntropy(Objective):
    """``S = -H(K / N)``, the negative log-Vendi entropy of the kernel matrix (nats)."""

    kernel: Kernel
    separates_duplicates = True

    def __call__(self, features: Tensor) -> BatchSimilarity:
        matrix = self.kernel(features, features)
        count = features.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix.detach().double() / count)
        slopes = entropy_gram_gradient(eigenvalues, eigenvectors, count).to(matrix.dtype)
        # dH/dK = slopes in closed form (autograd through eigh is unstable at repeated eigenvalues): the
        # surrogate (slopes * K).sum() carries the gradient, and its value is replaced by H's own.
        surrogate = (slopes * matrix).sum()
        entropy = surrogate - surrogate.detach() + _entropy(eigenvalues).to(matrix.dtype)
        return BatchSimilarity(-entropy, matrix.detach())


def _entropy(eigenvalues: Tensor) -> Tensor:
    """``-sum lambda log lambda`` over the positive eigenvalues of ``K / N`` (``0 log 0 = 0``)."""
    positive = eigenvalues[eigenvalues > 0]
    return -(positive * positive.log()).sum()


def make_objective(name: str, kernel_name: str = "rbf", bandwidth="median", temperature: float | None = None
                   ) -> Objective:
    """The objective called ``name`` (one of ``OBJECTIVE_NAMES``) over the kernel ``kernel_name``.

    ``collision`` ignores the kernel: it compares class probabilities with ``CollisionKernel(temperature)``.
    """
    if name == "kernel_sum":
        return KernelSum(make_kernel(kernel_name, bandwidth))
    if name == "log_vendi":
        return LogVendiEntropy(make_kernel(kernel_name, bandwidth))
    if name == "collision":
        return KernelSum(make_kernel("collision", temperature=temperature))
    raise ValueError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVE_NAMES)}")


def coincident_groups(features: Tensor) -> list[list[int]]:
    """Groups (two or more rows, in batch order) of rows of ``features`` ``[N, F]`` that coincide up to
    round-off: closer than ``_COINCIDENCE_TOLERANCE`` times the largest row norm."""
    count = features.shape[0]
    if count < 2:
        return []
    scale = torch.linalg.vector_norm(features, dim=1).max().item()
    close = torch.cdist(features, features) <= _COINCIDENCE_TOLERANCE * max(scale, math.ulp(1.0))
    groups, assigned = [], set()
    for row in range(count):
        if row in assigned:
            continue
        members = [other for other in range(row, count) if close[row, other] and other not in assigned]
        assigned.update(members)
        if len(members) > 1:
            groups.append(members)
    return groups


def split_directions(groups: list[list[int]], shape: torch.Size, norm: float) -> Tensor:
    """``[N, F]`` rows that pull each group of duplicates apart: member r of a group gets a fixed seeded
    direction (the same for every batch), centred over its group (the group's mean stays put) and scaled
    to a mean row norm of ``norm``; rows outside any group are zero."""
    directions = torch.zeros(shape, dtype=torch.float64)
    for members in groups:
        seeded = torch.stack([_seeded_direction(rank, shape[1]) for rank in range(len(members))])
        centred = seeded - seeded.mean(dim=0)
        directions[members] = norm * centred / torch.linalg.vector_norm(centred, dim=1).mean()
    return directions


def _seeded_direction(rank: int, size: int) -> Tensor:
    generator = torch.Generator().manual_seed(_SPLIT_SEED + rank)
    return torch.randn(size, generator=generator, dtype=torch.float64)


def _typical_row_norm(gradient: Tensor, groups: list[list[int]]) -> float:
    """The mean row norm of ``gradient`` outside the duplicate groups (1 when every row is a duplicate):
    the size given to the splitting rows, so they weigh like the rest of the batch's force."""
    duplicates = {row for members in groups for row in members}
    others = [row for row in range(gradient.shape[0]) if row not in duplicates]
    if not others:
        return 1.0
    return torch.linalg.vector_norm(gradient[others].double(), dim=1).mean().item() or 1.0
