"""The repulsive term of SVGD for one batch of latents.

    R_i = (1/N) grad_{x_i} sum_j k(phi(x_i), stopgrad phi(x_j))

is the direction that INCREASES the batch's similarity; callers subtract it to push samples apart. It is
one vector-Jacobian product: one forward and one backward pass of the embedder phi for the whole batch.

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

from .similarity import Kernel

Embedder = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Repulsion:
    """The outcome of one repulsion evaluation.

    force: ``R`` ``[N, ...]``, shaped and typed like the latents (see the module docstring).
    similarity: ``[N, N]`` float32 detached kernel matrix ``k(phi(x_i), phi(x_j))``, for logging.
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


def repulsion(latents: Tensor, embed: Embedder, kernel: Kernel) -> Repulsion:
    """Repulsion force and kernel matrix for a batch ``latents`` ``[N, C, H, W]`` (any dtype).

    embed: differentiable map ``[N, C, H, W] -> [N, F]``; kernel: see ``kernels.similarity``. The kernel
    maths runs in float32; the force comes back in the latents' dtype. A single sample gets a zero force
    and no backward pass.
    """
    with torch.inference_mode(False), torch.enable_grad():
        particles = latents.detach().to(torch.float32, copy=True).requires_grad_(True)
        features = _embed(embed, particles)
        similarity = kernel(features, features.detach())
        force = _similarity_gradient(similarity, particles)
    return Repulsion(force=force.to(latents.dtype), similarity=similarity.detach())


def repulsion_force(latents: Tensor, embed: Embedder, kernel: Kernel) -> Tensor:
    """Just the force ``[N, C, H, W]`` of ``repulsion``."""
    return repulsion(latents, embed, kernel).force


def _embed(embed: Embedder, particles: Tensor) -> Tensor:
    features = embed(particles)
    count = particles.shape[0]
    if features.ndim != 2 or features.shape[0] != count:
        raise ValueError(f"the embedder must return one feature row per sample, shape [{count}, F]; "
                         f"got {tuple(features.shape)}")
    return features.to(torch.float32)


def _similarity_gradient(similarity: Tensor, particles: Tensor) -> Tensor:
    """``(1/N) grad_x sum_ij similarity_ij`` ``[N, ...]``: one backward pass, none for a single sample."""
    count = particles.shape[0]
    if count < 2:
        return torch.zeros_like(particles)
    if not similarity.requires_grad:
        raise ValueError("the embedder's output does not depend differentiably on the latent "
                         "(it was detached or computed without gradients), so it cannot steer repulsion")
    (gradient,) = torch.autograd.grad(similarity.sum() / count, particles)
    return gradient
