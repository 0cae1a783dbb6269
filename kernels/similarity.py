"""Similarity kernels on feature matrices, and the median bandwidth rule.

Every kernel is called as ``kernel(features, anchors) -> similarity`` with ``features`` ``[N, F]`` (may
require grad), ``anchors`` ``[M, F]`` (treated as constants) and ``similarity`` ``[N, M]``, in the dtype
of the inputs. Squared distances are always taken from coordinate differences: the expansion
``|x|^2 + |y|^2 - 2 x.y`` cancels catastrophically on latents, whose norms dwarf their differences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

Bandwidth = Union[str, float]
Kernel = Callable[[Tensor, Tensor], Tensor]

MEDIAN = "median"
KERNEL_NAMES = ("rbf", "imq", "cosine")

# If every particle coincides, all differences vanish and so does the force, whatever the bandwidth;
# this value only keeps d^2 / h finite.
_COINCIDENT_BANDWIDTH = 1.0
# Rows shorter than this have no meaningful direction and are treated as zero vectors.
_ZERO_NORM = 1e-12
# Measured on the digits and Gaussian-mixture benchmarks (benchmarks/RESULTS.md).
DEFAULT_COLLISION_TEMPERATURE = 3.0
# Probabilities are clamped here before their log, so a class with probability 0 stays finite.
_SMALLEST_PROBABILITY = 1e-12
_PROBABILITY_SUM_TOLERANCE = 1e-3


def squared_distances(features: Tensor, anchors: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances ``[N, M]`` between the rows of ``features`` and ``anchors``.

    Differentiable with respect to both inputs.
    """
    _check_feature_pair(features, anchors)
    return _SquaredDistances.apply(features, anchors)


def median_bandwidth(anchors: Tensor) -> Tensor:
    """Median heuristic ``h = median(d^2) / log(N + 1)`` over distinct pairs of anchors ``[N, F]``.

    Returns a detached scalar tensor in the anchors' dtype, in units of squared feature distance. The
    median runs over the pairs at a positive distance, so duplicated samples do not collapse it to 0
    (which would switch the repulsion off for everyone else). With fewer than two distinct anchors
    the force is zero anyway and a placeholder of 1 is returned. For an even number of pairs this is
    the lower of the two middle values.
    """
    return _median_bandwidth_of_pairs(torch.pdist(anchors.detach()).square(), anchors.shape[0])


def _median_bandwidth_of_pairs(pair_squared_distances: Tensor, count: int) -> Tensor:
    """``median_bandwidth`` from the squared distances ``[P]`` of the distinct pairs of ``count`` anchors."""
    if count < 2:
        return pair_squared_distances.new_tensor(_COINCIDENT_BANDWIDTH)
    positive = pair_squared_distances.masked_fill(pair_squared_distances == 0, math.nan)
    return torch.nan_to_num(positive.nanmedian() / math.log(count + 1), nan=_COINCIDENT_BANDWIDTH)


def safe_row_norms(matrix: Tensor) -> Tensor:
    """Euclidean norms ``[N, 1]`` of the rows of ``matrix`` ``[N, F]``, with +inf for (near-)zero rows.

    Dividing by these norms maps zero rows to zero rows with a zero gradient instead of NaN.
    """
    norms = torch.linalg.vector_norm(matrix, dim=1, keepdim=True)
    return torch.where(norms > _ZERO_NORM, norms, torch.full_like(norms, math.inf))


def unit_rows(matrix: Tensor) -> Tensor:
    """The rows of ``matrix`` ``[N, F]`` scaled to unit norm; zero rows stay zero."""
    return matrix / safe_row_norms(matrix)


@dataclass(frozen=True)
class _RadialKernel:
    """A kernel ``profile(d^2 / h)`` of the squared distance d^2 scaled by the bandwidth h."""

    bandwidth: Bandwidth = MEDIAN

    def __post_init__(self) -> None:
        _check_bandwidth(self.bandwidth)

    def __call__(self, features: Tensor, anchors: Tensor) -> Tensor:
        squared = squared_distances(features, anchors)
        return self.profile(squared / self._resolve_bandwidth(features, anchors, squared))

    def _resolve_bandwidth(self, features: Tensor, anchors: Tensor, squared: Tensor) -> Tensor | float:
        """h in units of squared feature distance."""
        if self.bandwidth != MEDIAN:
            return float(self.bandwidth)
        if _same_memory(features, anchors):
            # The anchors' pair distances are already in `squared`, each pair twice: the lower median
            # of a list with every value doubled is that of the list (the zero diagonal is skipped).
            return _median_bandwidth_of_pairs(squared.detach().flatten(), anchors.shape[0])
        return median_bandwidth(anchors)

    def profile(self, scaled_squared_distances: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class RBFKernel(_RadialKernel):
    """Gaussian kernel ``exp(-d^2 / h)``; ``bandwidth`` is ``"median"`` or a fixed positive h."""

    def profile(self, scaled_squared_distances: Tensor) -> Tensor:
        return torch.exp(-scaled_squared_distances)


@dataclass(frozen=True)
class IMQKernel(_RadialKernel):
    """Inverse multiquadric ``(1 + d^2 / h)^beta`` with ``beta < 0``: heavier tails than the RBF."""

    beta: float = -0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta < 0:
            raise ValueError(f"the IMQ kernel needs a negative beta (similarity must fall with distance), "
                             f"got {self.beta}")

    def profile(self, scaled_squared_distances: Tensor) -> Tensor:
        return (1 + scaled_squared_distances).pow(self.beta)


@dataclass(frozen=True)
class CosineKernel:
    """Cosine similarity of the feature directions; a zero feature vector is similar to nothing (0)."""

    def __call__(self, features: Tensor, anchors: Tensor) -> Tensor:
        _check_feature_pair(features, anchors)
        return unit_rows(features) @ unit_rows(anchors).T


@dataclass(frozen=True)
class CollisionKernel:
    """``k(p, q) = p_T . q_T``: the chance that two samples share a class, for class-probability features.

    ``p_T = softmax(log p / T)`` re-tempers each probability row ``p`` (``softmax(logits / T)`` when
    ``p = softmax(logits)``). A temperature above 1 leaves probability on the classes a sample is far
    from, so the gradient can also push it toward them. Rows must be probabilities (non-negative,
    summing to 1): anything else is refused with a message saying what to connect.
    """

    temperature: float = DEFAULT_COLLISION_TEMPERATURE

    def __post_init__(self) -> None:
        if not 0 < self.temperature < math.inf:
            raise ValueError(f"the collision temperature must be a positive number, got {self.temperature!r}")

    def __call__(self, features: Tensor, anchors: Tensor) -> Tensor:
        _check_feature_pair(features, anchors)
        _check_probabilities(anchors)
        return self.tempered(features) @ self.tempered(anchors).T

    def tempered(self, probabilities: Tensor) -> Tensor:
        logits = torch.log(probabilities.clamp_min(_SMALLEST_PROBABILITY))
        return torch.softmax(logits / self.temperature, dim=1)


_RADIAL_KERNELS = {"rbf": RBFKernel, "imq": IMQKernel}


def make_kernel(name: str, bandwidth: Bandwidth = MEDIAN, temperature: float | None = None) -> Kernel:
    """The kernel called ``name`` (one of ``KERNEL_NAMES``, or ``"collision"``).

    ``bandwidth`` applies to the radial kernels, ``temperature`` (None: the default) to collision.
    """
    if name == "cosine":
        return CosineKernel()
    if name == "collision":
        return CollisionKernel(DEFAULT_COLLISION_TEMPERATURE if temperature is None else temperature)
    if name in _RADIAL_KERNELS:
        return _RADIAL_KERNELS[name](bandwidth)
    raise ValueError(f"unknown kernel {name!r}; choose one of: {', '.join(KERNEL_NAMES)}")


class _SquaredDistances(torch.autograd.Function):
    """Squared distances from differences; the backward is ``sum_j g_ij 2 (x_i - y_j)`` as a matmul."""

    @staticmethod
    def forward(ctx, features: Tensor, anchors: Tensor) -> Tensor:
        # d^2 is translation invariant: centring keeps the backward's matmul products small.
        centre = anchors.mean(dim=0)
        centred_anchors = anchors - centre
        if _same_memory(features, anchors):
            ctx.save_for_backward(centred_anchors, centred_anchors)
            return _square_form(torch.pdist(anchors), anchors.shape[0]).square()
        ctx.save_for_backward(features - centre, centred_anchors)
        return torch.cdist(features, anchors, compute_mode="donot_use_mm_for_euclid_dist").square()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        features, anchors = ctx.saved_tensors
        grad_features = _difference_vjp(grad, features, anchors) if ctx.needs_input_grad[0] else None
        grad_anchors = _difference_vjp(grad.T, anchors, features) if ctx.needs_input_grad[1] else None
        return grad_features, grad_anchors


def _difference_vjp(weights: Tensor, rows: Tensor, others: Tensor) -> Tensor:
    """``sum_j weights_ij * 2 (rows_i - others_j)`` for every row i: ``[N, F]``."""
    return torch.addmm(rows * (2 * weights.sum(dim=1, keepdim=True)), weights, others, alpha=-2)


def _same_memory(features: Tensor, anchors: Tensor) -> bool:
    """Whether the anchors are the features themselves, as in the repulsion (anchors = features.detach()).

    Then each pair's distance is computed once with pdist, several times faster on CPU than cdist's
    difference path, and reused by the median bandwidth.
    """
    return (features.data_ptr() == anchors.data_ptr() and features.shape == anchors.shape
            and features.stride() == anchors.stride() and features.dtype == anchors.dtype)


def _square_form(pair_distances: Tensor, count: int) -> Tensor:
    """The symmetric ``[count, count]`` matrix of pdist's condensed upper triangle."""
    rows, columns = torch.triu_indices(count, count, offset=1, device=pair_distances.device)
    matrix = pair_distances.new_zeros(count, count)
    matrix[rows, columns] = pair_distances
    return matrix + matrix.T


def _check_feature_pair(features: Tensor, anchors: Tensor) -> None:
    if features.ndim != 2 or anchors.ndim != 2:
        raise ValueError(f"kernels compare feature matrices [N, F] and [M, F]; got shapes "
                         f"{tuple(features.shape)} and {tuple(anchors.shape)}")
    if features.shape[1] != anchors.shape[1]:
        raise ValueError(f"features have {features.shape[1]} dimensions but anchors have {anchors.shape[1]}")


def _check_probabilities(rows: Tensor) -> None:
    sums = rows.detach().sum(dim=1)
    if bool((rows.detach() < 0).any()) or bool(((sums - 1).abs() > _PROBABILITY_SUM_TOLERANCE).any()):
        raise ValueError("class collision compares class probabilities, but these features are not "
                         "probabilities (non-negative rows summing to 1). Connect a style embedder whose "
                         "output is its class probabilities (Load Style Embedder, output = "
                         "class_probabilities), or choose another objective.")


def _check_bandwidth(bandwidth: Bandwidth) -> None:
    is_median = isinstance(bandwidth, str) and bandwidth == MEDIAN
    is_number = isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool)
    if not (is_median or (is_number and 0 < bandwidth < math.inf)):
        raise ValueError(f"bandwidth must be {MEDIAN!r} or a positive number, got {bandwidth!r}")
