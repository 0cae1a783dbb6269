"""Gaussian mixtures with exact denoisers, in the variance-exploding form `x = x0 + s n` (float64 maths).

A single Gaussian is the mixture of one component: there repulsion has no mode to find, so whatever it
adds to the samples' variance is left-over push (or noise) that a user would see.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Means are bilinear upsamplings of a coarse grid: smooth, image-like patterns.
COARSE_SIZE = 4


class GaussianMixture(nn.Module):
    """Components N(mu_k, std^2 I) with weights w_k over latents [C, H, W].

    Means are smooth random patterns (bilinear from 4x4, seeded) whose elements have RMS
    sqrt(1 - std^2), so a sample's elements have about unit variance, as ComfyUI's latent scaling
    assumes. Weights need not sum to 1 (they are normalised).
    """

    def __init__(self, weights: Sequence[float], shape: tuple[int, int, int], std: float, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        coarse = torch.randn(len(weights), shape[0], COARSE_SIZE, COARSE_SIZE, generator=generator,
                             dtype=torch.float64)
        means = F.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False)
        element_rms = means.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
        self.register_buffer("means", means / element_rms * math.sqrt(1 - std**2))
        weights = torch.tensor(weights, dtype=torch.float64)
        self.register_buffer("log_weights", torch.log(weights / weights.sum()))
        self.std = std

    @property
    def components(self) -> int:
        return self.means.shape[0]

    def log_components(self, latents: Tensor, extra_variance: Tensor) -> Tensor:
        """log(w_k N(x; mu_k, (std^2 + extra) I)) [N, K] for latents [N, C, H, W], extra variance [N]."""
        variance = (self.std**2 + extra_variance.double()).reshape(-1, 1)
        dimensions = latents[0].numel()
        squared = torch.cdist(latents.flatten(1).double(), self.means.flatten(1)).square()
        return (-0.5 * squared / variance - 0.5 * dimensions * torch.log(2 * math.pi * variance)
                + self.log_weights)

    def denoise(self, noisy: Tensor, sigma: Tensor) -> Tensor:
        """The exact E[x0 | x = x0 + sigma n] [N, C, H, W] for noise levels sigma [N]."""
        variance = self.std**2 + sigma.double() ** 2
        responsibilities = torch.softmax(self.log_components(noisy, sigma.double() ** 2), dim=1)
        posterior_mean = torch.einsum("nk,kd->nd", responsibilities, self.means.flatten(1)).view(noisy.shape)
        shrink = (self.std**2 / variance).view(-1, 1, 1, 1)
        return (posterior_mean + shrink * (noisy.double() - posterior_mean)).to(noisy.dtype)

    def logits(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        """The exact classifier: log posterior of the component [N, K] (float32) given noisy latents."""
        extra = torch.zeros(latents.shape[0]) if sigma is None else sigma.detach().double() ** 2
        return torch.log_softmax(self.log_components(latents, extra), dim=1).float()

    def log_likelihood(self, samples: Tensor) -> Tensor:
        """log p(x) [N] of clean samples, in nats."""
        return torch.logsumexp(self.log_components(samples, torch.zeros(samples.shape[0])), dim=1)

    def modes(self, samples: Tensor) -> Tensor:
        """The most likely component [N] of each sample."""
        return self.log_components(samples, torch.zeros(samples.shape[0])).argmax(dim=1)

    def expected_modes(self, batch_size: int) -> float:
        """The expected number of distinct components among `batch_size` i.i.d. samples."""
        weights = self.log_weights.exp()
        return float((1 - (1 - weights) ** batch_size).sum())


def equal_mixture(components: int, shape: tuple[int, int, int], std: float, seed: int) -> GaussianMixture:
    return GaussianMixture([1.0] * components, shape, std, seed)


def single_gaussian(shape: tuple[int, int, int], std: float, seed: int | None) -> GaussianMixture:
    """One component: mean zero (`seed` None) or a smooth unit-scale pattern (seeded)."""
    gaussian = GaussianMixture([1.0], shape, std, seed or 0)
    if seed is None:
        gaussian.means.zero_()
    return gaussian
