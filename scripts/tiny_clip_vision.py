"""A CLIP vision model with finite deterministic weights, in the file format `CLIPVisionLoader` reads.

ComfyUI picks a CLIP vision config from the keys of the file (`comfy/clip_vision.py`), and the smallest
config it recognises is ViT-L/14 at 224 pixels (24 layers, ~300 M parameters): a file is a ViT-L when
it has a layer 22, no layer 30, and a 257-row position embedding. So the tiny model is that full-size
architecture with weights from `tiny_models.deterministic_tensor`: about 0.6 GB in float16, written in
seconds and rebuilt only when its fingerprint changes. Its embeddings mean nothing, but they are
finite and differ between different images, which is what the Diversity Metric tests need.

Run inside the host virtualenv (see `comfy_host.py`):

    .host/venv/bin/python scripts/tiny_clip_vision.py   # writes models/clip_vision/<file> in the host
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import TinyModel, ensure, meta_state_shapes  # noqa: E402

import comfy_host  # noqa: E402

VIT_L_CONFIG_FILE = "clip_vision_config_vitl.json"


def vit_l_config() -> dict:
    """ComfyUI's own ViT-L/14 CLIP vision config, the one its loader will pick for this file."""
    return json.loads((comfy_host.COMFYUI_DIR / "comfy" / VIT_L_CONFIG_FILE).read_text())


def clip_vision_layout() -> dict[str, torch.Size]:
    """Key -> shape of a ViT-L/14 CLIP vision file in the Hugging Face layout ComfyUI loads directly."""
    import comfy.clip_model
    import comfy.ops

    with torch.device("meta"):
        model = comfy.clip_model.CLIPVisionModelProjection(vit_l_config(), torch.float32, "meta",
                                                           comfy.ops.manual_cast)
    return meta_state_shapes(model, "")


TINY_CLIP_VISION = TinyModel("particle-repulsion-tiny-clip-vision.safetensors", "clip_vision",
                             clip_vision_layout, {"clip_vision": VIT_L_CONFIG_FILE})


def main() -> int:
    print(f"[tiny-clip-vision] {ensure(TINY_CLIP_VISION)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
