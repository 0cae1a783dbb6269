"""Tiny, deterministic models in ComfyUI's real file formats, for the demo and the tests.

No weights can be downloaded on the machines this pack is developed on, so the tests build their own:
ComfyUI's own model classes are instantiated on the `meta` device to learn the exact state-dict layout,
and every tensor is filled from a generator seeded by its name (finite, reproducible, independent of
dict order). The checkpoint loads through `CheckpointLoaderSimple` with ComfyUI's own detection.

Run inside the host virtualenv with ComfyUI importable (see `comfy_host.py`):

    .host/venv/bin/python scripts/tiny_models.py     # writes the models into .host/ComfyUI/models/
"""
from __future__ import annotations

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

FACTORY_VERSION = 1
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
    1-D `weight`s are norm scales (ones); biases and buffers are zero. Integer-valued buffers such as
    CLIP's `position_ids` get their natural value.
    """
    if name.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.float32).expand(shape).clone()
    if len(shape) >= 2:
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
        return torch.randn(shape, generator=generator) / fan_in ** 0.5
    if name.endswith("weight"):
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


ALL_MODELS = (TINY_SD15,)


def main() -> int:
    for model in ALL_MODELS:
        print(f"[tiny-models] {ensure(model)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
