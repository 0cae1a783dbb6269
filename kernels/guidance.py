"""How a repulsion force becomes a change of the denoised prediction (the contract with the thesis).

ComfyUI's samplers step along `d = (x - D) / sigma`. The thesis's repulsive Euler step

    x_next = x + eps * (s(x) - alpha * R(x)),   eps = sigma * (sigma - sigma_next),  s = (D - x) / sigma^2

is exactly the Euler step taken on `D' = D - alpha * sigma^2 * R`. So every sampler gets repulsion by
seeing `D'` instead of `D`; this module computes the shift `D - D'`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

STRENGTH_MODES = ("relative", "absolute")
# Relative variance below which a denoising direction is round-off (float32 latents, float64 Gram).
_SPAN_ROUND_OFF = 1e-10
# A push whose RMS is below this share of the force's is round-off of the projection.
_PUSH_ROUND_OFF = 1e-4
# The relative push follows noise_share ** PROFILE_POWER (benchmarks/bench_defaults.py measured 1 to 3).
PROFILE_POWER = 3
SPACES = ("noisy", "denoised")


@dataclass(frozen=True)
class RepulsionSettings:
    """What the user chose on a repulsion node.

    strength: relative mode: repulsion displacement as a fraction of the denoising displacement (RMS over
        the whole batch; 0.5 means the push apart is half as long as the step toward the prediction);
        absolute mode: the thesis's alpha (units of 1 / latent^2, model- and embedder-dependent).
    space: "noisy" computes the embedding on the sampler's state x (thesis); "denoised" on the predicted
        clean latent D (Particle Guidance style; gradient w.r.t. D, never through the model).
    start, end: the sigma window as fractions of the schedule, 0 = first step; `end` is excluded, so
        end = k / steps repels in the first k steps (the model is never evaluated at the end of the
        schedule, so end = 1 covers every step).
    """

    strength: float
    strength_mode: str = "relative"
    space: str = "noisy"
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if self.strength_mode not in STRENGTH_MODES:
            raise ValueError(f"strength_mode must be one of {STRENGTH_MODES}, got {self.strength_mode!r}")
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"the sigma window needs 0 <= start <= end <= 1, got start={self.start}, end={self.end}")

    @property
    def enabled(self) -> bool:
        return self.strength != 0.0 and self.end > self.start


def schedule_progress(sigma: float, sigmas: torch.Tensor) -> float:
    """Where noise level `sigma` lies in the decreasing schedule `sigmas` [S+1], as a fraction in [0, 1].

    0 at `sigmas[0]`, k/S at `sigmas[k]`, linear in between (samplers that evaluate the model at
    intermediate noise levels, such as heun or dpm_2, land between two steps). Based on sigma alone,
    never on a call counter.
    """
    schedule = sigmas.detach().flatten().double().cpu()
    steps = schedule.numel() - 1
    if steps < 1:
        return 0.0
    for index in range(steps):
        upper, lower = schedule[index].item(), schedule[index + 1].item()
        if sigma >= lower:
            if sigma >= upper:
                return index / steps
            return (index + (upper - sigma) / (upper - lower)) / steps
    return 1.0


def in_schedule_window(sigma: float, sigmas: torch.Tensor, start: float, end: float) -> bool:
    """Whether noise level `sigma` lies in `[start, end)` of the schedule `sigmas` [S+1].

    Half-open, so `end = k / S` means exactly the first k of S steps (the model is never evaluated at
    the end of the schedule, so `end = 1` covers every step).
    """
    return start <= schedule_progress(sigma, sigmas) < end


def in_window(settings: RepulsionSettings, sigma: float, sigmas: torch.Tensor | None) -> bool:
    """Whether repulsion acts at `sigma`. Without a known schedule, the window is ignored (always on)."""
    if not settings.enabled:
        return False
    return sigmas is None or in_schedule_window(sigma, sigmas, settings.start, settings.end)


def batch_rms(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float().pow(2).mean().sqrt()


@dataclass(frozen=True)
class NoiseLevel:
    """How a sampler state mixes signal and noise: `x = signal * x0 + noise * n` (per sample).

    EPS and v models: signal 1, noise sigma. Flow models: signal 1 - t, noise t.
    """

    signal: float
    noise: float

    @property
    def noise_to_signal(self) -> float:
        """The variance-exploding sigma of this state (inf at pure noise)."""
        return self.noise / self.signal if self.signal > 0 else math.inf

    @property
    def noise_share(self) -> float:
        """`s^2 / (1 + s^2)` for s = noise_to_signal: the share of a unit-variance latent's variance that
        is noise. 1 at pure noise, 0 when clean."""
        return self.noise ** 2 / (self.noise ** 2 + self.signal ** 2)


def outside_denoising_span(force: torch.Tensor, denoised: torch.Tensor, x: torch.Tensor,
                           level: NoiseLevel) -> torch.Tensor:
    """`force` [N, ...] without its components along any sample's denoising direction.

    Sample k's denoising direction is `D_k - x_k / signal` (from its state, in the signal's units,
    toward its prediction), computed as `signal * D_k - x_k`: at high noise that is k's own noise.
    Where predictions still coincide, samples differ mostly by their noise, so a push apart runs along
    these directions and would simply keep noise in the images; removing the N directions of the batch
    (out of C*H*W) leaves the push along content. Directions of zero length (clean states, duplicates)
    add nothing to the span.
    """
    flat = force.float().flatten(1)
    directions = (level.signal * denoised.float() - x.float()).flatten(1)
    basis = orthonormal_basis(directions)
    return (flat - (flat @ basis.T) @ basis).view_as(force)


def orthonormal_basis(rows: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis [r, d] of the span of `rows` [N, d], r <= N; directions whose variance is
    below round-off of the largest are dropped.

    Through the N x N Gram matrix (float64), cheap for any d: `basis = V^T rows / sqrt(lambda)`.
    """
    gram = rows.double() @ rows.double().T
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    if eigenvalues.numel() == 0 or eigenvalues[-1] <= 0:
        return rows.new_zeros(0, rows.shape[1])
    kept = eigenvalues > eigenvalues[-1] * _SPAN_ROUND_OFF
    coefficients = eigenvectors[:, kept].T / eigenvalues[kept].sqrt()[:, None]
    return (coefficients.to(rows.dtype) @ rows)


def denoised_shift(force: torch.Tensor, denoised: torch.Tensor, x: torch.Tensor, sigma: float,
                   level: NoiseLevel, settings: RepulsionSettings) -> torch.Tensor:
    """The amount `D - D'` to subtract from the denoised prediction, [N, C, H, W] like `denoised`.

    force: R [N, C, H, W], the gradient of the batch's similarity (direction of MORE similarity).
    sigma: the sampler's noise level; level: how its state mixes signal and noise.

    Absolute: `alpha * sigma^2 * R` (thesis). Relative: R outside the batch's denoising directions
    (`outside_denoising_span`), rescaled so that its batch RMS is `strength * noise_share^3` in latent
    units (ComfyUI's latents have about unit variance). The predicted clean images move apart by that
    much per model call: the same push in the same units for every model family (flow models included,
    whose state is measured in the signal's units), full while the image is mostly noise and fading out
    fast once signal dominates, where a push no longer changes what the image shows, only adds to it.
    A zero force gives a zero shift.
    """
    if settings.strength_mode == "absolute":
        return (settings.strength * sigma ** 2) * force.float()
    push = outside_denoising_span(force, denoised, x, level)
    push_rms = batch_rms(push)
    if push_rms <= _PUSH_ROUND_OFF * batch_rms(force):
        # Nothing is left but round-off (the force lay in the denoising span): no push, never an
        # amplified one.
        return torch.zeros_like(push)
    return push * (settings.strength * level.noise_share ** PROFILE_POWER / push_rms)
