"""The repulsion force on one batch of latents: the gradient of a diversity objective.

    R_i = grad_{x_i} S(phi(x_1), ..., phi(x_N))

for a batch similarity S (``kernels.objectives``; the thesis's SVGD term is
``S = (1/N) sum_ij k(phi_i, stopgrad phi_j)``) is the direction that INCREASES the batch's similarity;
callers subtract it to push samples apart. It is one vector-Jacobian product: one forward and one
backward pass of the embedder phi for the whole batch (the objective's own gradient, with respect to
the N x F features, is cheap).

Callable from ComfyUI code running under ``torch.inference_mode()`` or ``torch.no_grad()``: gradients are
re-enabled locally and the latents are copied out of inference mode. The embedder's own weights must
NOT be inference tensors (create or move them to their device outside ``torch.inference_mode()``),
since autograd cannot save inference tensors for the backward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .objectives import Objective

Embedder = Callable[[Tensor], Tensor]


class NonFiniteFeatures(ValueError):
    """The embedder returned NaN or infinite features: the repulsion cannot be computed from them."""


@dataclass(frozen=True)
class Repulsion:
    """The outcome of one repulsion evaluation.

    force: ``R`` ``[N, ...]``, shaped and typed like the latents (see the module docstring).
    similarity: ``[N, N]`` float32 detached pairwise similarities ``k(phi(x_i), phi(x_j))``, for logging.
    """

    force: Tensor
    similarity: Tensor

    @property
    def mean_similarity(self) -> float:
        """Mean kernel similarity over pairs of distinct samples; NaN for a single sample."""
        count = self.similarity.shape[0]
        if count < 2:
            return float("nan")
        off_diagonal_total = self.similarity.sum() - self.similarity.diagonal().sum()
        return (off_diagonal_total / (count * (count - 1))).item()


def repulsion(latents: Tensor, embed: Embedder, objective: Objective) -> Repulsion:
    """Repulsion force and pairwise similarities for a batch ``latents`` ``[N, C, H, W]`` (any dtype).

    embed: differentiable map ``[N, C, H, W] -> [N, F]``; objective: see ``kernels.objectives``. The
    objective's maths runs in float32; the force comes back in the latents' dtype. A single sample gets
    a zero force and no backward pass.
    """
    with torch.inference_mode(False), torch.enable_grad():
        particles = latents.detach().to(torch.float32, copy=True).requires_grad_(True)
        features = _embed(embed, particles)
        if particles.shape[0] < 2:
            similarity = objective(features).matrix
            return Repulsion(force=torch.zeros_like(latents), similarity=similarity)
        feature_gradient, similarity = objective.feature_gradient(features)
        (force,) = torch.autograd.grad(features, particles, feature_gradient)
    return Repulsion(force=force.to(latents.dtype), similarity=similarity)


def repulsion_force(latents: Tensor, embed: Embedder, objective: Objective) -> Tensor:
    """Just the force ``[N, C, H, W]`` of ``repulsion``."""
    return repulsion(latents, embed, objective).force


def _embed(embed: Embedder, particles: Tensor) -> Tensor:
    features = embed(particles)
    count = particles.shape[0]
    if features.ndim != 2 or features.shape[0] != count:
        raise ValueError(f"the embedder must return one feature row per sample, shape [{count}, F]; "
                         f"got {tuple(features.shape)}")
    if not features.requires_grad:
        raise ValueError("the embedder's output does not depend differentiably on the latent "
                         "(it was detached or computed without gradients), so it cannot steer repulsion")
    if not torch.isfinite(features).all():
        raise NonFiniteFeatures("the embedder returned NaN or infinite features")
    return features.to(torch.float32)
