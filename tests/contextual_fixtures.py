"""Fixtures and helpers for the contextual repulsion tests: tiny Flux and SD3, CLIP-L conditioning,
in-process sampling, and probe patches that look at a block's output inside a real model call.

Import the fixtures into a test module (`from contextual_fixtures import tiny_flux, ...`); they build
on the `comfy` and `tiny_checkpoint` fixtures of conftest.py.
"""
from __future__ import annotations

import pytest
import torch

BATCH = 4
STEPS = 4


@pytest.fixture(scope="session")
def tiny_flux(comfy):
    """ModelPatcher around the tiny Flux (built in memory, see scripts/tiny_models.py)."""
    import tiny_models

    return tiny_models.load_tiny_flux()


@pytest.fixture(scope="session")
def tiny_sd3_file(comfy) -> str:
    """File name (for UNETLoader) of the tiny SD3 diffusion model."""
    import tiny_models

    return tiny_models.ensure(tiny_models.TINY_SD3).name


@pytest.fixture(scope="session")
def tiny_sd3(comfy, tiny_sd3_file):
    """ModelPatcher of the tiny SD3, loaded by ComfyUI's own detection, as UNETLoader does."""
    import comfy.sd
    import folder_paths

    return comfy.sd.load_diffusion_model(folder_paths.get_full_path_or_raise("diffusion_models", tiny_sd3_file))


@pytest.fixture(scope="session")
def tiny_sd15(comfy, tiny_checkpoint):
    """(ModelPatcher, CLIP) of the tiny SD1.5 checkpoint: a UNet, and the CLIP-L every tiny DiT listens to."""
    import comfy.sd
    import folder_paths

    path = folder_paths.get_full_path_or_raise("checkpoints", tiny_checkpoint)
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=False)
    return model, clip


@pytest.fixture(scope="session")
def conditioning(tiny_sd15):
    """(positive, negative) CONDITIONING from CLIP-L: [1, 77, 768] tokens and a 768 pooled vector."""
    _, clip = tiny_sd15

    def encode(text):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    return encode("a lighthouse at dusk"), encode("blurry")


def sample(model, conditioning, cfg: float, seed: int = 7, batch: int = BATCH, steps: int = STEPS) -> torch.Tensor:
    """Final latents [batch, 16, 8, 8] of the stock KSampler path (euler, simple) on 64x64 pixels."""
    import comfy.sample

    positive, negative = conditioning
    latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros(batch, 4, 8, 8))
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                                   disable_pbar=True, seed=seed)


def stream_of(output: dict, stream_key: str, text_tokens: int | None):
    """The stream a probe watches in a block's output: `txt`/`img` of a double block; for a single block
    (key `joint_text` / `joint_image`) the text or image part of the joint stream."""
    if stream_key == "joint_text":
        return output["img"][:, :text_tokens]
    if stream_key == "joint_image":
        return output["img"][:, text_tokens:]
    return output[stream_key]


class StreamProbe:
    """A block patch that runs what was on the block before it (or the block) and records one stream of
    the output at every call, with the call's sigma and cond/uncond labels. Chains like a well-behaved
    third-party patch, so it also stands for "a patch already on the model"."""

    def __init__(self, stream_key: str, previous_patch=None, text_tokens: int | None = None):
        self.stream_key = stream_key
        self.previous_patch = previous_patch
        self.text_tokens = text_tokens
        self.calls: list[dict] = []

    def __deepcopy__(self, memo):
        return self  # an instrument: every clone of the model (ModelPatcher.clone deep-copies) reports here

    def __call__(self, args: dict, extra: dict) -> dict:
        output = (self.previous_patch or (lambda a, e: e["original_block"](a)))(args, extra)
        options = args["transformer_options"]
        self.calls.append({"stream": stream_of(output, self.stream_key, self.text_tokens).clone(),
                           "sigma": float(options["sigmas"].max()), "schedule": options["sample_sigmas"],
                           "chunks": list(options["cond_or_uncond"])})
        return output


def add_probe(model, block: tuple[str, int], stream_key: str, text_tokens: int | None = None):
    """A clone of `model` with a StreamProbe on `block`, chained to what was there; returns (clone, probe)."""
    probed = model.clone()
    existing = probed.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    probe = StreamProbe(stream_key, existing.get(block), text_tokens)
    probed.set_model_patch_replace(probe, "dit", block[0], block[1])
    return probed, probe


def chunk_entropies(streams: torch.Tensor, chunk_count: int) -> list[float]:
    """log-Vendi entropy of each cond/uncond chunk of a recorded stream [B, T, D]."""
    from particle_repulsion.kernels import log_vendi_entropy

    return [log_vendi_entropy(chunk.flatten(1).double()).item() for chunk in streams.chunk(chunk_count)]
