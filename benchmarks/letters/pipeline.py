"""The letters model in-process, through ComfyUI's own node classes, and the judges' verdict on a batch.

`load()` installs the committed files into the host (`install.py`) and loads them as a user's graph does:
UNETLoader, CLIPLoader (type sd3), VAELoader. `Letters.sample` runs a sampler node on an empty SD3
latent, `Letters.judge` decodes with VAEDecode and scores with the judges.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import nodes
import torch
from torch import Tensor

from particle_repulsion.metrics import vendi_score

from .glyphs import IMAGE_SIDE, LETTERS, rgb_to_ink
from .install import CLIP_NAME, MODEL_FOLDERS, UNET_NAME, VAE_NAME, install
from .judges import GlyphJudge
from .models import font_judge, letter_judge, load_styles

# The letters model's sampling settings (SD3-style: Euler, "simple" schedule).
SAMPLING = {"steps": 20, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}
# Repulsion in the font embedder as the demo and the letters workflow use it: its features with the sampler's
# default objective (log_vendi) at strength 4, the most fonts within 3 points of i.i.d. letter accuracy
# (benchmarks/RESULTS.md, section 4).
FONT_EMBEDDER_OUTPUT = "features"
FONT_EMBEDDER_STRENGTH = 4.0
# The contextual node's default block range (the middle third) holds no block of this two-block model; its
# first block is the one whose text stream feeds the rest (the last SD3 block emits no text stream).
CONTEXTUAL_BLOCKS = {"block_start": 0.0, "block_end": 0.5}


@dataclass(frozen=True)
class Verdict:
    """The judges on one batch: letter [N] and style [N] indices, font-judge features [N, 128]."""

    letters: Tensor
    styles: Tensor
    features: Tensor

    def figures(self, letter: str) -> dict:
        """distinct styles, Vendi of the font-judge features (cosine), and the share of the right letter."""
        return {"distinct_fonts": self.styles.unique().numel(), "vendi": vendi_score(self.features),
                "letter_accuracy": (self.letters == LETTERS.index(letter)).float().mean().item()}


@dataclass(frozen=True)
class Judges:
    """The letter and font judges (CNNs on clean renders; they score batches and never steer)."""

    letter: GlyphJudge
    font: GlyphJudge

    @torch.no_grad()
    def verdict(self, images: Tensor) -> Verdict:
        """The judges on ComfyUI IMAGEs [N, H, W, 3] in [0, 1]."""
        ink = rgb_to_ink(images)
        features = self.font.features(ink)
        return Verdict(self.letter(ink).argmax(dim=1), self.font.head(features).argmax(dim=1), features)


def load_judges() -> Judges:
    return Judges(letter_judge(), font_judge())


@dataclass
class Letters:
    model: object
    clip: object
    vae: object
    judges: Judges
    styles: list[str]
    encoded: dict = field(default_factory=dict)

    def encode(self, text: str):
        """CLIPTextEncode's CONDITIONING for `text` (computed once per text)."""
        if text not in self.encoded:
            self.encoded[text] = nodes.CLIPTextEncode().encode(self.clip, text)[0]
        return self.encoded[text]

    @staticmethod
    def empty_latent(batch_size: int) -> dict:
        """What EmptySD3LatentImage gives at 64 x 64 pixels: zeros [batch_size, 16, 8, 8]."""
        return {"samples": torch.zeros(batch_size, 16, IMAGE_SIDE // 8, IMAGE_SIDE // 8)}

    def images(self, latent: dict) -> Tensor:
        """VAEDecode's IMAGE [N, 64, 64, 3]."""
        return nodes.VAEDecode().decode(self.vae, latent)[0]

    def judge(self, images: Tensor) -> Verdict:
        return self.judges.verdict(images)


def load() -> Letters:
    """Install the committed files into the host and load them through ComfyUI's loader nodes."""
    install(folders=MODEL_FOLDERS)
    model = nodes.UNETLoader().load_unet(UNET_NAME, "default")[0]
    clip = nodes.CLIPLoader().load_clip(CLIP_NAME, "sd3")[0]
    vae = nodes.VAELoader().load_vae(VAE_NAME)[0]
    return Letters(model, clip, vae, load_judges(), load_styles()["styles"])
