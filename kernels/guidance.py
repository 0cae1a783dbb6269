"""How a repulsion force becomes a change of the denoised prediction (the contract with the thesis).

ComfyUI's samplers step along `d = (x - D) / sigma`. The thesis's repulsive Euler step

    x_next = x + eps * (s(x) - alpha * R(x)),   eps = sigma * (sigma - sigma_next),  s = (D - x) / sigma^2

is exactly the Euler step taken on `D' = D - alpha * sigma^2 * R`. So every sampler gets repulsion by
seeing `D'` instead of `D`; this module computes the shift `D - D'`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

STRENGTH_MODES = ("relative", "absolute")
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


def denoised_shift(force: torch.Tensor, denoised: torch.Tensor, x: torch.Tensor, sigma: float,
                   settings: RepulsionSettings) -> torch.Tensor:
    """The amount `D - D'` to subtract from the denoised prediction, [N, C, H, W] like `denoised`.

    force: R [N, C, H, W], the gradient of the batch's kernel similarity (direction of MORE similarity).
    Absolute: `alpha * sigma^2 * R` (thesis). Relative: R rescaled so that its batch RMS is
    `strength * RMS(D - x)`, i.e. the push apart is that fraction of the denoising displacement whatever
    the model, embedder or batch size. A zero force gives a zero shift.
    """
    if settings.strength_mode == "absolute":
        return (settings.strength * sigma ** 2) * force.float()
    force_rms = batch_rms(force)
    if force_rms == 0:
        return torch.zeros_like(force, dtype=torch.float32)
    return force.float() * (settings.strength * batch_rms(denoised - x) / force_rms)
