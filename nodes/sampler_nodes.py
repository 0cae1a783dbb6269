"""Repulsive KSampler, Repulsive Sampler (SAMPLER) and the Repulsion model patch (MODEL).

All three share the same repulsion inputs (`repulsion_inputs`) and end in the same `Repulsion` object.
"""
from __future__ import annotations

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..kernels import DEFAULT_COLLISION_TEMPERATURE, KERNEL_NAMES, MEDIAN, OBJECTIVE_NAMES, make_objective
from ..kernels.guidance import SPACES, STRENGTH_MODES, RepulsionSettings
from .repulsion import Repulsion, patch_model, repulsive_sampler
from .stock_sampling import stock_latent_samples, stock_sampler_output
from .validation import require_finite_numbers

CATEGORY = "particle_repulsion/sampling"
DEFAULT_OBJECTIVE = "log_vendi"
EMBEDDER_TOOLTIP = ("Where similarity is measured (from a Repulsion Embedder or Load Style Embedder node). "
                    "Not connected: the raw latent.")


def repulsion_inputs() -> dict:
    """The repulsion widgets every repulsion node shows, in their saved-workflow order (new ones go last).

    The defaults are measured (benchmarks/bench_defaults.py): on every model family they add modes to a
    Gaussian mixture at a few percent of likelihood and keep a single Gaussian's variance.
    """
    return {
        "strength": ("FLOAT", {
            "default": 0.5, "min": 0.0, "max": 100000.0, "step": 0.05,
            "tooltip": "How hard the images of the batch push each other apart (0 = plain sampling). Relative "
                       "mode: how far each step moves the predicted images apart, in units of a latent's "
                       "spread, full while the image is mostly noise and fading out as it becomes clean; the "
                       "same value does the same on SD1.5, SDXL, v-prediction, SD3, Flux and turbo models. "
                       "0.5 is clear at a small cost; 1-2 is strong. Absolute mode: the thesis's alpha."}),
        "strength_mode": (list(STRENGTH_MODES), {
            "default": "relative",
            "tooltip": "relative: the portable strength above; the push never runs along the images' noise, so "
                       "it cannot leave noise in them. absolute: the thesis's alpha, D' = D - alpha * sigma^2 * R "
                       "(depends on the model and embedder; for reproducing the thesis)."}),
        "space": (list(SPACES), {
            "default": "denoised",
            "tooltip": "denoised: compare the model's predicted clean images (recommended: the push follows "
                       "content). noisy: compare the noisy latents the sampler holds (the thesis)."}),
        "kernel": (list(KERNEL_NAMES), {
            "default": "rbf",
            "tooltip": "Similarity between two images' features, used by the kernel_sum and log_vendi "
                       "objectives: rbf (default), imq (heavier tails: far-apart images push too), cosine "
                       "(ignores feature magnitude)."}),
        "bandwidth": ("FLOAT", {
            "default": 0.0, "min": 0.0, "max": 1.0e6, "step": 0.01,
            "tooltip": "rbf/imq: kernel bandwidth h in squared feature units; 0 = median heuristic, re-estimated "
                       "at every step from the batch (recommended). collision objective: the softmax "
                       f"temperature; 0 = {DEFAULT_COLLISION_TEMPERATURE:g}."}),
        "start": ("FLOAT", {
            "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
            "tooltip": "Start repelling at this fraction of the schedule (0 = first step)."}),
        "end": ("FLOAT", {
            "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
            "tooltip": "Stop repelling at this fraction of the schedule (excluded: end = k / steps repels in "
                       "the first k steps; 1 = every step). The relative push already fades out as the images "
                       "become clean, so 1 is the recommended default."}),
    }


def optional_repulsion_inputs() -> dict:
    """The optional inputs of every repulsion node: the EMBEDDER socket and the widgets added after the
    first release (optional, so that API prompts written before them still run, with their defaults)."""
    return {"optional": {
        "embedder": ("EMBEDDER", {"tooltip": EMBEDDER_TOOLTIP}),
        "objective": (list(OBJECTIVE_NAMES), {
            "default": DEFAULT_OBJECTIVE,
            "tooltip": "What 'alike' costs. log_vendi: the batch's entropy (log of its Vendi score); keeps "
                       "pushing alike images apart, recommended. kernel_sum: the thesis's SVGD kernel sum (alike "
                       "images push weakly). collision: the chance that two images share a class, for a style "
                       "embedder whose output is class probabilities."}),
    }}


def repulsion_defaults() -> dict:
    """{widget: default} of every repulsion widget as the nodes declare it (required and optional)."""
    declared = {**repulsion_inputs(), **optional_repulsion_inputs()["optional"]}
    return {name: options["default"] for name, (_, options) in declared.items() if "default" in options}


def build_repulsion(strength, strength_mode, space, kernel, bandwidth, start, end, objective=DEFAULT_OBJECTIVE,
                    embedder=None) -> Repulsion:
    """The `Repulsion` the repulsion widgets describe (values checked here: ComfyUI lets NaN through)."""
    require_finite_numbers({"strength": strength, "bandwidth": bandwidth, "start": start, "end": end})
    settings = RepulsionSettings(strength=strength, strength_mode=strength_mode, space=space, start=start, end=end)
    scale = bandwidth if bandwidth > 0 else None
    diversity = make_objective(objective, kernel, MEDIAN if scale is None else scale, temperature=scale)
    return Repulsion(settings, diversity, embedder=embedder)


class RepulsiveKSampler:
    """The stock KSampler with batch repulsion at every denoising step."""

    DESCRIPTION = ("KSampler that makes the images of one batch differ from each other: at every step each "
                   "image is pushed away from the others in the chosen embedding space. The defaults work on "
                   "every model family. Strength 0 is exactly the stock KSampler.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent batch.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model used for denoising."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                                 "tooltip": "Seed of the initial noise (the whole batch comes from one generator)."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "Denoising steps."}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance scale."}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {
                    "tooltip": "Any ComfyUI sampler; repulsion acts on every model evaluation. CFG++ samplers "
                               "take their drift from the uncond prediction, so repulsion there is partial."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"tooltip": "Noise schedule."}),
                "positive": ("CONDITIONING", {"tooltip": "What to include in the images."}),
                "negative": ("CONDITIONING", {"tooltip": "What to exclude from the images."}),
                "latent_image": ("LATENT", {"tooltip": "The latent batch to denoise (batch size 2 or more "
                                                       "for repulsion)."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "Fraction of the schedule to run (lower keeps more of the input)."}),
                **repulsion_inputs(),
            },
            **optional_repulsion_inputs(),
        }

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
               denoise, embedder=None, **repulsion_options):
        require_finite_numbers({"cfg": cfg, "denoise": denoise})
        repulsion = build_repulsion(embedder=embedder, **repulsion_options)
        sampler = repulsive_sampler(comfy.samplers.sampler_object(sampler_name), repulsion)
        sigmas = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                         scheduler=scheduler, denoise=denoise,
                                         model_options=model.model_options).sigmas
        latent = stock_latent_samples(model, latent_image)
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        samples = comfy.sample.sample_custom(
            model, noise, cfg, sampler, sigmas, positive, negative, latent,
            noise_mask=latent_image.get("noise_mask"), callback=latent_preview.prepare_callback(model, steps),
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        return (stock_sampler_output(latent_image, samples),)


class RepulsiveSampler:
    """SAMPLER in, SAMPLER out: adds batch repulsion to any sampler for SamplerCustom(Advanced)."""

    DESCRIPTION = ("Wraps a SAMPLER (from KSamplerSelect or any sampler node) so that the images of the batch "
                   "push each other apart at every model evaluation. Use with SamplerCustom or "
                   "SamplerCustomAdvanced.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("The same sampler, with repulsion.",)
    FUNCTION = "wrap"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"sampler": ("SAMPLER", {"tooltip": "The sampler to add repulsion to."}), **repulsion_inputs()},
            **optional_repulsion_inputs(),
        }

    def wrap(self, sampler, embedder=None, **repulsion_options):
        return (repulsive_sampler(sampler, build_repulsion(embedder=embedder, **repulsion_options)),)


class RepulsionModelPatch:
    """MODEL in, MODEL out: repulsion as a post-CFG function, for the stock KSampler and other samplers."""

    DESCRIPTION = ("Patches the MODEL so that any sampler node (including the stock KSampler) repels the images "
                   "of the batch. Applied after CFG; other post-CFG patches run in the order they were added.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with repulsion.",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"model": ("MODEL", {"tooltip": "The model to patch."}), **repulsion_inputs()},
            **optional_repulsion_inputs(),
        }

    def patch(self, model, embedder=None, **repulsion_options):
        return (patch_model(model, build_repulsion(embedder=embedder, **repulsion_options)),)
