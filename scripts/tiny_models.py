"""Tiny, deterministic models in ComfyUI's real file formats, for the demo and the tests.

No weights can be downloaded on the machines this pack is developed on, so the tests build their own:
ComfyUI's own model classes are instantiated on the `meta` device to learn the exact state-dict layout,
and every tensor is filled from a generator seeded by its name (finite, reproducible, independent of
dict order). The checkpoint loads through `CheckpointLoaderSimple` with ComfyUI's own detection.

Run inside the host virtualenv with ComfyUI importable (see `comfy_host.py`):

    .host/venv/bin/python scripts/tiny_models.py     # writes the models into .host/ComfyUI/models/
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_host  # noqa: E402

comfy_host.use_comfyui_in_process()

FACTORY_VERSION = 2
FINGERPRINT_KEY = "particle_repulsion.tiny_model"

# SD1.5 UNet with its free sizes shrunk; model_channels=320 and context_dim=768 are what ComfyUI's
# detection needs to recognise SD1.5, so they stay.
TINY_SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "model_channels": 320, "num_res_blocks": [1, 1], "channel_mult": [1, 1],
    "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
# ComfyUI's default SD1.x VAE (its loader does not read these sizes from the file).
SD_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


@dataclass(frozen=True)
class TinyModel:
    """One tiny model file: where ComfyUI looks for it and how to build its state dict."""

    file_name: str
    model_folder: str  # a ComfyUI model folder name, e.g. "checkpoints"
    build_layout: Callable[[], dict[str, torch.Size]]
    config: dict

    def path(self) -> Path:
        return comfy_host.COMFYUI_DIR / "models" / self.model_folder / self.file_name

    def fingerprint(self) -> str:
        payload = json.dumps([FACTORY_VERSION, self.file_name, self.config], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def meta_state_shapes(module: torch.nn.Module, prefix: str) -> dict[str, torch.Size]:
    return {prefix + name: tensor.shape for name, tensor in module.state_dict().items()}


def sd15_layout() -> dict[str, torch.Size]:
    """Key -> shape of an SD1.5-format checkpoint with the tiny UNet, CLIP-L and the SD VAE."""
    import comfy.clip_model
    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    clip_config = json.loads((comfy_host.COMFYUI_DIR / "comfy" / "sd1_clip_config.json").read_text())
    operations = comfy.ops.disable_weight_init
    with torch.device("meta"):
        unet = UNetModel(**TINY_SD15_UNET, operations=operations)
        clip = comfy.clip_model.CLIPTextModel(clip_config, torch.float32, "meta", operations)
        vae = AutoencoderKL(ddconfig=SD_VAE, embed_dim=SD_VAE["z_channels"])
    layout = meta_state_shapes(unet, "model.diffusion_model.")
    layout.update(meta_state_shapes(clip, "cond_stage_model.transformer."))
    layout.update(meta_state_shapes(vae, "first_stage_model."))
    return layout


TINY_SD15 = TinyModel("particle-repulsion-tiny-sd15.safetensors", "checkpoints", sd15_layout,
                      {"unet": TINY_SD15_UNET, "vae": SD_VAE, "clip": "sd1_clip_config.json"})


def deterministic_tensor(name: str, shape: torch.Size) -> torch.Tensor:
    """A finite tensor for parameter `name`, seeded by the name alone.

    Matrices and kernels get N(0, 1/fan_in) (activations keep their scale through deep stacks);
    1-D `weight`s and `scale`s are norm gains (ones: zeros would flatten every attention map); biases
    and buffers are zero. Integer-valued buffers such as
    CLIP's `position_ids` get their natural value.
    """
    if name.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.float32).expand(shape).clone()
    if len(shape) >= 2:
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
        return torch.randn(shape, generator=generator) / fan_in ** 0.5
    if name.endswith(("weight", "scale")):
        return torch.ones(shape)
    return torch.zeros(shape)


def stored_fingerprint(path: Path) -> str | None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get(FINGERPRINT_KEY)
    except Exception:  # a missing, partial or foreign file is simply rebuilt
        return None


def ensure(model: TinyModel) -> Path:
    """Write `model` unless an identical build is already on disk; return its path."""
    path = model.path()
    if stored_fingerprint(path) == model.fingerprint():
        return path
    state = {name: deterministic_tensor(name, shape).to(torch.float16)
             for name, shape in model.build_layout().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file(state, str(partial), metadata={FINGERPRINT_KEY: model.fingerprint()})
    partial.replace(path)
    return path


# SD3-architecture MMDiT (comfy.ldm.modules.diffusionmodules.mmdit) with its free sizes shrunk. ComfyUI's
# detection reads depth from x_embedder (hidden size = 64 * depth, one head per 64 channels), the context
# and pooled widths from context_embedder and y_embedder: 768 lets it take the tiny SD1.5 checkpoint's
# CLIP-L conditioning directly. No pos_embed: the sin-cos table is computed for any size.
TINY_SD3_MMDIT = {
    "input_size": None, "patch_size": 2, "in_channels": 16, "out_channels": 16, "depth": 4,
    "adm_in_channels": 768, "qk_norm": "rms", "pos_embed_scaling_factor": None,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 768, "out_features": 256}},
}


def sd3_layout() -> dict[str, torch.Size]:
    """Key -> shape of an SD3-format diffusion model file (no prefix, as UNETLoader reads it)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    with torch.device("meta"):
        mmdit = MMDiT(**TINY_SD3_MMDIT, operations=comfy.ops.disable_weight_init)
    return meta_state_shapes(mmdit, "")


TINY_SD3 = TinyModel("particle-repulsion-tiny-sd3.safetensors", "diffusion_models", sd3_layout,
                     {"mmdit": TINY_SD3_MMDIT})

# Flux (comfy.ldm.flux.model.Flux) with its free sizes shrunk. ComfyUI's detection fixes num_heads = 24 and
# axes_dim = [16, 56, 56] for Flux, which forces hidden_size = 3072 (~340 M parameters per double block):
# too big for tests on a CPU. So the tiny Flux is never a file: `load_tiny_flux` builds it through
# ComfyUI's own Flux model config with this unet_config, the same loading path UNETLoader takes after
# detection. context_in_dim and vec_in_dim of 768 take CLIP-L conditioning directly.
TINY_FLUX_DIT = {
    "image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16,
    "vec_in_dim": 768, "context_in_dim": 768, "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 4,
    "depth": 3, "depth_single_blocks": 2, "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2,
    "qkv_bias": True,
}


def with_detected_fields(config: dict, params: type, detected: dict) -> dict:
    """`config` plus each of the `detected` values whose field the running ComfyUI's `params` dataclass has.

    `detected`: fields that newer ComfyUI requires and that its model detection fills for real files;
    older ComfyUI has no such field and refuses it, so the dataclass itself says which to add.
    """
    field_names = {params_field.name for params_field in dataclasses.fields(params)}
    return {**config, **{name: value for name, value in detected.items() if name in field_names}}


# What ComfyUI's detection fills for Flux 1 files (`txt_ids_dims` is a required FluxParams field since 0.4).
FLUX1_DETECTED_FIELDS = {"txt_ids_dims": []}


def with_detected_flux_fields(config: dict) -> dict:
    """A Flux 1 network config as this ComfyUI's FluxParams wants it."""
    from comfy.ldm.flux.model import FluxParams

    return with_detected_fields(config, FluxParams, FLUX1_DETECTED_FIELDS)


def flux_layout(config: dict) -> dict[str, torch.Size]:
    """Key -> shape of a Flux diffusion-model state dict (no prefix, as UNETLoader reads it)."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    with torch.device("meta"):
        flux = Flux(**with_detected_flux_fields(config), operations=comfy.ops.disable_weight_init)
    return meta_state_shapes(flux, "")


def tiny_flux_state() -> dict[str, torch.Tensor]:
    """The tiny Flux's diffusion-model state dict (no prefix), filled like every tiny model."""
    return {name: deterministic_tensor(name, shape) for name, shape in flux_layout(TINY_FLUX_DIT).items()}


def load_tiny_flux():
    """A ModelPatcher (what UNETLoader returns) around the tiny Flux, in float32 on ComfyUI's device."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.Flux(with_detected_flux_fields(TINY_FLUX_DIT))
    model_config.set_inference_dtype(torch.float32, None)
    state = tiny_flux_state()
    offload_device = comfy.model_management.unet_offload_device()
    model = model_config.get_model(state, "").to(offload_device)
    model.load_model_weights(state, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=offload_device)


# The smallest Flux that ComfyUI's detection loads from a file: the forced width (3072, 24 heads) with one
# double and one single block, ~0.5 B parameters (a 1 GB file written in seconds, a few seconds per step on
# a CPU). It runs the shipped Flux workflow end to end through UNETLoader.
SHALLOW_FLUX_DIT = {**TINY_FLUX_DIT, "hidden_size": 3072, "num_heads": 24, "axes_dim": [16, 56, 56],
                    "depth": 1, "depth_single_blocks": 1}
SHALLOW_FLUX = TinyModel("particle-repulsion-shallow-flux.safetensors", "diffusion_models",
                         lambda: flux_layout(SHALLOW_FLUX_DIT), {"flux": SHALLOW_FLUX_DIT})


def vae16_layout() -> dict[str, torch.Size]:
    """Key -> shape of a 16-channel VAE file (the SD3 / Flux latent layout), as VAELoader reads it."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig={**SD_VAE, "z_channels": 16}, embed_dim=16)
    return meta_state_shapes(vae, "")


TINY_VAE16 = TinyModel("particle-repulsion-vae16.safetensors", "vae", vae16_layout, {"vae": SD_VAE, "z_channels": 16})

ALL_MODELS = (TINY_SD15, TINY_SD3, SHALLOW_FLUX, TINY_VAE16)


def main() -> int:
    for model in ALL_MODELS:
        print(f"[tiny-models] {ensure(model)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
