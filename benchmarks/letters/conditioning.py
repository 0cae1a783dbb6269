"""The letters model's text encoder: the tiny checkpoint's CLIP-L, used as SD3's CLIP-L through ComfyUI.

The tiny SD1.5 checkpoint of `scripts/tiny_models.py` carries a CLIP-L with deterministic random
weights (seeded by each tensor's name). `clip_l_state` rebuilds exactly those tensors under the
standalone CLIP-L key names, so that `CLIPLoader` (type `sd3`) loads it from `models/text_encoders`.
`encode` runs ComfyUI's own CLIP code, as CLIPTextEncode does, so the conditioning the transformer is
trained on is the one it gets at inference: context [77, 4096] (CLIP-L's penultimate hidden states in
the first 768 columns, zeros after) and pooled [2048] (CLIP-L's pooled output, then zeros).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import comfy.sd
import torch
from torch import Tensor

import tiny_models

CHECKPOINT_PREFIX = "cond_stage_model.transformer."
CLIP_L_WIDTH = 768
SD3_CONTEXT_WIDTH = 4096
SD3_POOLED_WIDTH = 2048
TOKENS = 77


def clip_l_state() -> dict[str, Tensor]:
    """The tiny checkpoint's CLIP-L tensors (float16, as in the checkpoint) under standalone key names."""
    return {name[len(CHECKPOINT_PREFIX):]: tiny_models.deterministic_tensor(name, shape).to(torch.float16)
            for name, shape in tiny_models.sd15_layout().items() if name.startswith(CHECKPOINT_PREFIX)}


def load_clip(path: Path):
    """The CLIP object CLIPLoader(type "sd3") gives for the CLIP-L file at `path`."""
    return comfy.sd.load_clip(ckpt_paths=[str(path)], clip_type=comfy.sd.CLIPType.SD3)


def encode(clip, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """CLIPTextEncode's output for every text, cut to CLIP-L's non-zero part: context [T, 77, 768] and
    pooled [T, 768] (float32). Raises if the cut-off columns are not zero (the layout assumed above)."""
    contexts, pooled = [], []
    for text in texts:
        [[context, extras]] = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        if context.shape != (1, TOKENS, SD3_CONTEXT_WIDTH) or context[..., CLIP_L_WIDTH:].abs().max() > 0 \
                or extras["pooled_output"][..., CLIP_L_WIDTH:].abs().max() > 0:
            raise ValueError("SD3's CLIP-L-only conditioning is not [77, 4096] with zeros after column 768")
        contexts.append(context[0, :, :CLIP_L_WIDTH].float())
        pooled.append(extras["pooled_output"][0, :CLIP_L_WIDTH].float())
    return torch.stack(contexts), torch.stack(pooled)
