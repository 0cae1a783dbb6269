"""The repulsion hook: turn the denoised prediction D into D' for the whole batch, at every model call.

Two ways into ComfyUI's sampling, both ending in `Repulsion.apply`:
- `repulsive_sampler(base, repulsion)`: a SAMPLER whose function hands the base sampler a proxy
  denoiser (`RepulsiveDenoiser`); works with every sampler and every model family.
- `patch_model(model, repulsion)`: a post-CFG function on a clone of the MODEL, for the stock KSampler.
"""
from __future__ import annotations

import logging

import comfy.model_management
import comfy.samplers
import torch

from ..kernels import NonFiniteFeatures, Objective, repulsion_force
from ..kernels.guidance import NoiseLevel, RepulsionSettings, denoised_shift, in_window
from .embedder_recipes import BuiltinEmbedderRecipe, EmbedderRecipe

LOG = logging.getLogger("particle_repulsion")


class Repulsion:
    """One configured repulsion (settings, objective, embedder recipe) that maps D to D'.

    The embedder is built lazily, once per (latent channels, device), outside inference mode, because
    the number of latent channels is only known when sampling starts.
    """

    def __init__(self, settings: RepulsionSettings, objective: Objective, embedder: EmbedderRecipe | None = None):
        self.settings = settings
        self.objective = objective
        self.recipe = embedder or BuiltinEmbedderRecipe()
        self._embedders: dict[tuple[int, torch.device], torch.nn.Module] = {}
        self._warned_batch_of_one = False

    def apply(self, denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigmas: torch.Tensor | None,
              denoise_mask: torch.Tensor | None, model) -> torch.Tensor:
        """D' for one model evaluation. Shapes [N, C, H, W]; `sigma` [N] (one noise level per sample);
        `model` is ComfyUI's BaseModel (its latent format and model sampling), or None if unknown.

        Returns `denoised` itself when repulsion does not act (strength 0, outside the sigma window,
        batch of one), so those cases are bit-identical to sampling without the pack.
        """
        sigma_value = float(sigma.flatten()[0])
        if not in_window(self.settings, sigma_value, sigmas):
            return denoised
        if x.shape[0] < 2:
            self._warn_batch_of_one()
            return denoised
        comfy.model_management.throw_exception_if_processing_interrupted()
        require_finite(x, "the sampler's latent", sigma_value)
        require_finite(denoised, "the model's prediction", sigma_value)
        try:
            shift = self._shift(denoised, x, sigma, sigma_value, model)
        except NonFiniteFeatures as error:
            raise self._non_finite_push(sigma_value) from error
        if not torch.isfinite(shift).all():
            raise self._non_finite_push(sigma_value)
        if denoise_mask is not None:
            shift = shift * denoise_mask
        return denoised - shift.to(denoised.dtype)

    def _shift(self, denoised, x, sigma, sigma_value, model) -> torch.Tensor:
        noisy_space = self.settings.space == "noisy"
        particles = x if noisy_space else denoised
        embedder = self._embedder_for(particles, getattr(model, "latent_format", None))
        embedder_sigma = sigma if noisy_space else None
        force = repulsion_force(particles, lambda latents: embedder(latents, embedder_sigma), self.objective)
        level = noise_level(getattr(model, "model_sampling", None), sigma_value)
        return denoised_shift(force, denoised, x, sigma_value, level, self.settings)

    def _non_finite_push(self, sigma_value: float) -> ValueError:
        """The error for a push that came out NaN or infinite from a finite latent and prediction."""
        return ValueError(
            f"Particle Repulsion: the push computed in the {self.recipe.label} embedder's space is NaN or "
            f"infinite at sigma={sigma_value:.4g}, while the model's prediction is finite. The embedder "
            "(e.g. a style embedder with broken weights) or extreme repulsion settings (strength, bandwidth) "
            "caused it; the latent is fine.")

    def _embedder_for(self, particles: torch.Tensor, latent_format) -> torch.nn.Module:
        key = (particles.shape[1], particles.device)
        if key not in self._embedders:
            with torch.inference_mode(False):
                embedder = self.recipe.build(particles.shape[1], latent_format)
                self._embedders[key] = embedder.to(particles.device)
        return self._embedders[key]

    def _warn_batch_of_one(self) -> None:
        if not self._warned_batch_of_one:
            LOG.warning("Particle Repulsion: the batch has one image, there is nothing to repel it from; "
                        "sampling without repulsion. Use a batch size of 2 or more.")
            self._warned_batch_of_one = True


def noise_level(model_sampling, sigma: float) -> NoiseLevel:
    """How the sampler state at noise level `sigma` mixes signal and noise.

    Read off the model sampling's own `noise_scaling` (state = signal * x0 + noise * n), so it holds for
    EPS and v models (1, sigma), flow models (1 - t, t) and whatever comes next; (1, sigma) when the
    model is unknown.
    """
    if model_sampling is None:
        return NoiseLevel(signal=1.0, noise=sigma)
    level = torch.tensor(sigma, dtype=torch.float64)
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    noise = float(model_sampling.noise_scaling(level, one.clone(), zero.clone()))
    signal = float(model_sampling.noise_scaling(level, zero.clone(), one.clone()))
    return NoiseLevel(signal=signal, noise=noise)


def require_finite(tensor: torch.Tensor, what: str, sigma: float) -> None:
    if not torch.isfinite(tensor).all():
        raise ValueError(f"Particle Repulsion: {what} contains NaN or infinite values at sigma={sigma:.4g}. "
                         "Check the input latent (and any node that produced it) before sampling.")


class RepulsiveDenoiser:
    """Stands in for a sampler's denoiser: returns D' where the wrapped denoiser returns D.

    Every other attribute (`inner_model`, `model_sampling`, `noise`, ...) is forwarded, because various
    samplers read them from the object they were given.
    """

    def __init__(self, denoiser, sigmas: torch.Tensor, repulsion: Repulsion):
        self.denoiser = denoiser
        self.sigmas = sigmas
        self.repulsion = repulsion

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        denoised = self.denoiser(x, sigma, *args, **kwargs)
        return self.repulsion.apply(denoised, x, sigma, self.sigmas, kwargs.get("denoise_mask"),
                                    base_model_of(self.denoiser))

    def __getattr__(self, name: str):
        return getattr(self.denoiser, name)


def base_model_of(denoiser):
    """ComfyUI's BaseModel behind a sampler's denoiser (KSamplerX0Inpaint -> guider -> model), or None."""
    return getattr(getattr(denoiser, "inner_model", None), "inner_model", None)


def repulsive_sampler(base: comfy.samplers.KSAMPLER, repulsion: Repulsion) -> comfy.samplers.KSAMPLER:
    """A SAMPLER that runs `base` on D' instead of D (same options, same inpainting behaviour)."""

    def sample(model, x, sigmas, *args, **kwargs):
        return base.sampler_function(RepulsiveDenoiser(model, sigmas, repulsion), x, sigmas, *args, **kwargs)

    return comfy.samplers.KSAMPLER(sample, base.extra_options, base.inpaint_options)


def patch_model(model, repulsion: Repulsion):
    """A clone of the MODEL whose post-CFG prediction is D' (the inpainting mask is applied after it)."""

    def post_cfg(args: dict) -> torch.Tensor:
        sigmas = args["model_options"].get("transformer_options", {}).get("sample_sigmas")
        return repulsion.apply(args["denoised"], args["input"], args["sigma"], sigmas, None, args["model"])

    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(post_cfg)
    return patched
