"""Loading the committed letters files in-process (judges, the VAE's two halves, the styles record)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .autoencoder import PatchProjection, new_decoder, projection_from_encoder
from .install import FONT_JUDGE_FILE, LETTER_JUDGE_FILE, STYLES_FILE, VAE_FILE
from .judges import GlyphJudge


def save_judge(judge: GlyphJudge, path: Path) -> None:
    """The judge's weights as float16 (the class count is the head's shape)."""
    save_file({name: tensor.to(torch.float16).contiguous() for name, tensor in judge.state_dict().items()}, str(path))


def load_judge(path: Path) -> GlyphJudge:
    """A judge from `save_judge`, float32, frozen, in eval mode."""
    state = {name: tensor.float() for name, tensor in load_file(str(path)).items()}
    judge = GlyphJudge(state["head.weight"].shape[0])
    judge.load_state_dict(state)
    return judge.eval().requires_grad_(False)


def letter_judge() -> GlyphJudge:
    return load_judge(LETTER_JUDGE_FILE)


def font_judge() -> GlyphJudge:
    return load_judge(FONT_JUDGE_FILE)


def load_styles() -> dict:
    """The styles record train.py writes: style names, their fonts, frequencies, figures, CPU times."""
    return json.loads(STYLES_FILE.read_text())


def _vae_part(prefix: str) -> dict:
    return {name[len(prefix):]: tensor for name, tensor in load_file(str(VAE_FILE)).items() if name.startswith(prefix)}


def load_projection() -> PatchProjection:
    """The committed VAE encoder as the patch projection it computes (float32)."""
    return projection_from_encoder(_vae_part("taesd_encoder."))


def load_decoder() -> nn.Sequential:
    """The committed VAE decoder (float32, frozen): latents [M, 16, 8, 8] (model space) -> RGB in [0, 1]."""
    decoder = new_decoder(seed=0)
    decoder.load_state_dict({name: tensor.float() for name, tensor in _vae_part("taesd_decoder.").items()})
    return decoder.eval().requires_grad_(False)
