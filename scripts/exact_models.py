"""Real ComfyUI MODELs whose prediction is a known denoiser, under every model sampling a user meets.

Shared by the tests and the benchmarks: a denoiser with known ground truth (an exact Gaussian or
mixture posterior mean, or a small trained network) is written once in the variance-exploding form
`D(x, s)` for `x = x0 + s n`; `denoiser_model` makes it a ComfyUI MODEL, and `Family.model` patches in a
model sampling with ComfyUI's own ModelSampling nodes, with the scheduler, step count and samplers a user
of such a model picks. Sampling then goes through ComfyUI's whole stack (CFGGuider, KSAMPLER, the
k-diffusion samplers, noise scaling, latent processing).

Needs ComfyUI importable in-process (`comfy_host.use_comfyui_in_process()`) and the pack's namespace
(`comfy_host.register_pack_namespace()`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import comfy.model_management
import comfy.model_patcher
import comfy.sample
import comfy.samplers
import comfy.supported_models
import torch
from comfy_extras import nodes_model_advanced
from torch import Tensor

import tiny_models
from particle_repulsion.nodes.repulsion import noise_level

Denoiser = Callable[[Tensor, Tensor], Tensor]
STANDARD_SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_sde")
FEW_STEP_SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "lcm")
# The signal share used for a state of pure noise (flow at t = 1), where the posterior mean is the data mean.
PURE_NOISE_SIGNAL = 1e-6
# With cfg 1.0 ComfyUI evaluates only the positive conditioning, and the denoisers ignore it; a 1x1
# cross-attention tensor keeps ComfyUI's per-step conditioning copies negligible.
NO_CONDITIONING = [[torch.zeros(1, 1, 1), {}]]


def denoiser_model(denoiser: Denoiser):
    """A ComfyUI MODEL (ModelPatcher around SD1.5's BaseModel) whose prediction is `denoiser`.

    The model keeps everything SD1.5 brings to sampling (epsilon parametrisation, the discrete sigma
    schedule 0.029 .. 14.6, noise scaling, the latent scale factor) until a ModelSampling node replaces
    the model sampling. Only the network is replaced, through the public `set_model_unet_function_wrapper`:
    ComfyUI hands the wrapper the sampler's state x and sigma ([N]), exactly what `BaseModel.apply_model`
    receives, and takes the returned denoised prediction D [N, C, H, W] as that call's result. The UNet is
    built with ComfyUI's uninitialised-weight operations and never runs.
    """
    model_config = comfy.supported_models.SD15(dict(tiny_models.TINY_SD15_UNET))
    model_config.set_inference_dtype(torch.float32, None)
    device = comfy.model_management.get_torch_device()
    patcher = comfy.model_patcher.ModelPatcher(model_config.get_model({}, ""), load_device=device,
                                               offload_device=device)
    patcher.set_model_unet_function_wrapper(
        lambda apply_model, arguments: in_sampler_state(denoiser, apply_model.__self__.model_sampling,
                                                        arguments["input"], arguments["timestep"]))
    return patcher


def in_sampler_state(denoiser: Denoiser, model_sampling, x: Tensor, sigma: Tensor) -> Tensor:
    """`denoiser`, written for the variance-exploding state `x0 + s n`, evaluated on a sampler's state `x`
    [N, ...] at its noise level `sigma` [N].

    A state `signal * x0 + noise * n` (the model sampling's own noise scaling: signal 1 for EPS and v,
    1 - t for flow) is the variance-exploding state at `s = noise / signal`, scaled by `signal`: the same
    posterior mean.
    """
    level = noise_level(model_sampling, float(sigma.flatten()[0]))
    if level.signal == 1.0:
        return denoiser(x, sigma)
    signal = max(level.signal, PURE_NOISE_SIGNAL)  # a flow schedule starts at t = 1: no signal at all
    return denoiser(x / signal, torch.full_like(sigma, level.noise / signal))


@dataclass(frozen=True)
class Family:
    """One model sampling with the scheduler, step count and samplers its users run.

    patch: MODEL -> MODEL through a stock ModelSampling node.
    """

    name: str
    patch: Callable[[object], object]
    scheduler: str
    steps: int
    samplers: tuple[str, ...] = STANDARD_SAMPLERS

    def model(self, denoiser: Denoiser):
        """A ComfyUI MODEL predicting `denoiser`'s posterior mean under this family's model sampling."""
        return self.patch(denoiser_model(denoiser))

    def sigmas(self, model, steps: int | None = None) -> Tensor:
        """The schedule [steps + 1] of `model` (made by `self.model`) for this family's scheduler."""
        return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), self.scheduler,
                                               steps or self.steps).cpu()


def discrete(sampling: str, zsnr: bool = False) -> Callable:
    """ModelSamplingDiscrete: "eps" or "v_prediction", optionally rescaled to zero terminal SNR."""
    return lambda model: nodes_model_advanced.ModelSamplingDiscrete().patch(model, sampling, zsnr)[0]


def sd3_flow(shift: float = 3.0) -> Callable:
    """ModelSamplingSD3: rectified flow with a constant time shift (3.0 for SD3/SD3.5)."""
    return lambda model: nodes_model_advanced.ModelSamplingSD3().patch(model, shift)[0]


def flux_flow(width: int = 1024, height: int = 1024) -> Callable:
    """ModelSamplingFlux at its default shifts for a `width` x `height` image (1024 px: shift 1.15)."""
    return lambda model: nodes_model_advanced.ModelSamplingFlux().patch(model, 1.15, 0.5, width, height)[0]


FAMILIES: tuple[Family, ...] = (
    Family("EPS karras", discrete("eps"), "karras", 20),
    Family("EPS normal", discrete("eps"), "normal", 20),
    Family("v normal", discrete("v_prediction"), "normal", 20),
    Family("v zsnr karras", discrete("v_prediction", zsnr=True), "karras", 20),
    Family("v zsnr simple", discrete("v_prediction", zsnr=True), "simple", 20),
    Family("SD3 flow", sd3_flow(), "simple", 20),
    Family("Flux flow", flux_flow(), "simple", 20),
    Family("turbo EPS, 4 steps", discrete("eps"), "sgm_uniform", 4, FEW_STEP_SAMPLERS),
    Family("turbo flow, 4 steps", sd3_flow(shift=1.0), "simple", 4, FEW_STEP_SAMPLERS),
)

FAMILY_NAMES = tuple(family.name for family in FAMILIES)


def family_named(name: str) -> Family:
    """The family called `name` (one of `FAMILY_NAMES`)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(f"unknown model family {name!r}; choose one of: {', '.join(FAMILY_NAMES)}")


def sample_latents(model, sampler_name: str, sigmas: Tensor, batch_shape, seed: int, sampler_wrapper=None) -> Tensor:
    """One batch [N, C, H, W] sampled from an empty latent as a node would (under inference mode, noise
    from `comfy.sample.prepare_noise(seed)`, cfg 1.0), in the denoiser's own latent space.

    `sampler_wrapper` (KSAMPLER -> KSAMPLER) wraps the built-in sampler, e.g. in the pack's repulsion.
    `sample_custom` returns latents divided by the model's scale factor (`process_latent_out`); they are
    scaled back so that the result lives where the denoiser's data does.
    """
    with torch.inference_mode():
        empty = torch.zeros(batch_shape)
        sampler = comfy.samplers.sampler_object(sampler_name)
        if sampler_wrapper is not None:
            sampler = sampler_wrapper(sampler)
        samples = comfy.sample.sample_custom(model, comfy.sample.prepare_noise(empty, seed), 1.0, sampler, sigmas,
                                             NO_CONDITIONING, NO_CONDITIONING, empty, disable_pbar=True, seed=seed)
        return model.get_model_object("latent_format").process_in(samples).clone()

