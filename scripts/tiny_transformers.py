"""Tiny diffusion transformers of every family Contextual Repulsion supports, built in memory.

Each is ComfyUI's own model: its model config (`comfy.supported_models`), its `model_base` class and its
network, constructed with shrunk free sizes (a few blocks, width 128-256) and loaded the way UNETLoader
loads a detected file. No file: ComfyUI's detection forces real widths (3072 and more) for most of these
families, far too big for tests on a CPU. Weights come from `tiny_models.deterministic_tensor` (finite,
seeded by the parameter's name). Text widths are 768, so the tiny SD1.5 checkpoint's CLIP-L conditioning
(`[1, 77, 768]` tokens, a 768 pooled vector) drives every one of them.

    import tiny_transformers
    model = tiny_transformers.load(tiny_transformers.QWEN_IMAGE)   # a ModelPatcher, float32, on the CPU

The tiny Flux 1 is `tiny_models.load_tiny_flux()`, the tiny SD3 `tiny_models.TINY_SD3` (a file).
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models  # noqa: E402  (puts ComfyUI on sys.path)

CLIP_WIDTH = 768  # CLIP-L's token and pooled width: every tiny model listens to it


@dataclass(frozen=True)
class TinyTransformer:
    """One tiny diffusion transformer.

    model_config: the class name in `comfy.supported_models` (what detection would pick for a real file).
    network_config: the keyword arguments of the network (ComfyUI's `unet_config`).
    detected_fields: `(params dataclass path, values)`: what ComfyUI's detection fills for real files in
    fields that newer versions require (e.g. `txt_ids_dims` since 0.4), see
    `tiny_models.with_detected_fields`.
    """

    model_config: str
    network_config: dict
    detected_fields: tuple[str, dict] | None = None

    def unet_config(self) -> dict:
        if self.detected_fields is None:
            return dict(self.network_config)
        params_path, values = self.detected_fields
        module_name, class_name = params_path.rsplit(".", 1)
        params = getattr(importlib.import_module(module_name), class_name)
        return tiny_models.with_detected_fields(self.network_config, params, values)


FLUX2 = TinyTransformer("Flux2", {
    "image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None,
    "context_in_dim": CLIP_WIDTH, "hidden_size": 128, "mlp_ratio": 3.0, "num_heads": 4, "depth": 3,
    "depth_single_blocks": 2, "axes_dim": [8, 8, 8, 8], "theta": 2000, "patch_size": 1, "qkv_bias": False,
    "guidance_embed": True, "global_modulation": True, "mlp_silu_act": True, "ops_bias": False,
    "default_ref_method": "index", "ref_index_scale": 10.0,
}, ("comfy.ldm.flux.model.FluxParams", {"txt_ids_dims": [3]}))

CHROMA = TinyTransformer("Chroma", {
    "image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": CLIP_WIDTH,
    "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 4, "depth": 3, "depth_single_blocks": 2,
    "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True,
    "in_dim": 64, "out_dim": 128, "hidden_dim": 256, "n_layers": 2,
}, ("comfy.ldm.chroma.model.ChromaParams", {"txt_ids_dims": [], "vec_in_dim": None}))

# Chroma Radiance: Chroma's blocks on pixels (3 channels, 4 x 4 patches), decoded by a small NeRF-style head.
CHROMA_RADIANCE = TinyTransformer("ChromaRadiance", {
    **CHROMA.network_config, "image_model": "chroma_radiance", "in_channels": 3, "out_channels": 3,
    "patch_size": 4, "nerf_hidden_size": 16, "nerf_mlp_ratio": 2, "nerf_depth": 1, "nerf_max_freqs": 4,
    "nerf_tile_size": 0, "nerf_final_head_type": "linear", "nerf_embedder_dtype": torch.float32,
}, ("comfy.ldm.chroma_radiance.model.ChromaRadianceParams", {"txt_ids_dims": [], "vec_in_dim": None, "use_x0": False}))

QWEN_IMAGE = TinyTransformer("QwenImage", {
    "image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 3,
    "attention_head_dim": 32, "num_attention_heads": 4, "joint_attention_dim": CLIP_WIDTH,
    "axes_dims_rope": [8, 12, 12],
})

# llama_layers picks, for each of the 3 + 2 blocks, one layer of the `conditioning_llama3` hidden states.
HIDREAM_LLAMA_LAYERS = 2
HIDREAM = TinyTransformer("HiDream", {
    "image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 3,
    "num_single_layers": 2, "attention_head_dim": 32, "num_attention_heads": 4,
    "caption_channels": [CLIP_WIDTH, CLIP_WIDTH], "text_emb_dim": CLIP_WIDTH, "num_routed_experts": 2,
    "num_activated_experts": 1, "axes_dims_rope": [8, 12, 12], "max_resolution": [128, 128],
    "llama_layers": [0, 1, 1, 1, 1],
})

LUMINA2 = TinyTransformer("Lumina2", {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 128, "n_layers": 3,
    "n_refiner_layers": 1, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 16, "ffn_dim_multiplier": 4.0,
    "qk_norm": True, "cap_feat_dim": CLIP_WIDTH, "axes_dims": [8, 12, 12], "axes_lens": [300, 512, 512],
    "rope_theta": 10000.0,
})

# Z-Image's modulation takes a 256-wide time embedding, so its width is at least 256. Its caption and image
# tokens are padded to multiples of 32, as in the real model.
ZIMAGE = TinyTransformer("ZImage", {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256, "n_layers": 3,
    "n_refiner_layers": 1, "n_heads": 8, "n_kv_heads": 8, "multiple_of": 16, "ffn_dim_multiplier": 8.0 / 3.0,
    "qk_norm": True, "cap_feat_dim": CLIP_WIDTH, "axes_dims": [8, 12, 12], "axes_lens": [1536, 512, 512],
    "rope_theta": 256.0, "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32,
})

# HunyuanImage 2.1: the HunyuanVideo network on 2-D latents (64 channels, 1 x 1 patches).
HUNYUAN_IMAGE = TinyTransformer("HunyuanImage21", {
    "image_model": "hunyuan_video", "in_channels": 64, "out_channels": 64, "vec_in_dim": None,
    "context_in_dim": CLIP_WIDTH, "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 4, "depth": 3,
    "depth_single_blocks": 2, "axes_dim": [16, 16], "theta": 256, "patch_size": [1, 1], "qkv_bias": True,
    "guidance_embed": False, "byt5": False, "meanflow": False, "use_cond_type_embedding": False,
    "vision_in_dim": None,
}, ("comfy.ldm.hunyuan_video.model.HunyuanVideoParams", {"meanflow_sum": False}))

# AuraFlow: a transformer with a text stream that Contextual Repulsion does not support (yet): the tiny one
# passes too little of its text on to its output to show what repulsion gains.
AURAFLOW = TinyTransformer("AuraFlow", {
    "in_channels": 4, "out_channels": 4, "patch_size": 2, "dim": 128, "n_layers": 2, "n_double_layers": 1,
    "n_heads": 4, "global_conddim": 128, "cond_seq_dim": CLIP_WIDTH, "max_seq": 64,
})


def load(tiny: TinyTransformer):
    """A ModelPatcher (what UNETLoader returns) around `tiny`, in float32 on ComfyUI's device."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    model_config = getattr(comfy.supported_models, tiny.model_config)(tiny.unet_config())
    model_config.set_inference_dtype(torch.float32, None)
    state = _tiny_state(model_config)
    offload_device = comfy.model_management.unet_offload_device()
    model = model_config.get_model(state, "").to(offload_device)
    model.load_model_weights(state, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=offload_device)


def _tiny_state(model_config) -> dict[str, torch.Tensor]:
    """The network's state dict (no prefix), laid out on the meta device and filled deterministically."""
    with torch.device("meta"):
        network = model_config.get_model({}, "", device=torch.device("meta")).diffusion_model
    return {name: tiny_models.deterministic_tensor(name, tensor.shape) for name, tensor in network.state_dict().items()}
