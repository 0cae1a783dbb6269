"""Glyph images: the 26 capital letters rendered in every candidate font, with small jitter.

An image is "ink" in [0, 1] (1 = black), [64, 64] float32. Each (font, letter) is rendered once at high
resolution and cropped to its ink; every sample then scales that crop so that its longer side spans a
random 40-52 px and places its centre within +-4 px of the image centre (area resampling: clean
anti-aliased edges). The same seed gives the same images on every machine with the same font files.
"""
from __future__ import annotations

import functools
import string
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .fonts import Font

LETTERS = tuple(string.ascii_uppercase)
IMAGE_SIDE = 64
RENDER_SIZE = 256  # font size (px) of the high-resolution master glyph
LONG_SIDE_RANGE = (40, 52)  # px the glyph's longer side spans
MAX_OFFSET = 4  # px of the glyph centre's jitter in each direction


def caption(letter: str, style: str | None = None) -> str:
    """The prompt of a glyph: "the letter R", or "the letter R by <style>" (the Style Latents from Prompts
    node's "{subject} by {style}" template). CLIP lower-cases text, so "the letter r" is the same prompt."""
    subject = f"the letter {letter}"
    return subject if style is None else f"{subject} by {style}"


@functools.lru_cache(maxsize=None)
def master_glyph(font_path: str, letter: str) -> np.ndarray:
    """The letter in the font at `RENDER_SIZE`, cropped to its ink: float32 [h, w] in [0, 1]."""
    font = ImageFont.truetype(font_path, RENDER_SIZE)
    canvas = Image.new("L", (3 * RENDER_SIZE, 3 * RENDER_SIZE), 0)
    ImageDraw.Draw(canvas).text((RENDER_SIZE, RENDER_SIZE), letter, fill=255, font=font)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"{font_path} has no glyph for {letter!r}")
    return np.asarray(canvas.crop(box), dtype=np.float32) / 255.0


def render(font: Font, letter: str, generator: np.random.Generator) -> np.ndarray:
    """One jittered render: ink [IMAGE_SIDE, IMAGE_SIDE] float32 in [0, 1]."""
    master = master_glyph(font.path, letter)
    long_side = generator.uniform(*LONG_SIDE_RANGE)
    scale = long_side / max(master.shape)
    height, width = (max(1, round(side * scale)) for side in master.shape)
    glyph = Image.fromarray(np.uint8(np.round(master * 255))).resize((width, height), Image.Resampling.BOX)
    centre = IMAGE_SIDE / 2 + generator.uniform(-MAX_OFFSET, MAX_OFFSET, size=2)
    image = Image.new("L", (IMAGE_SIDE, IMAGE_SIDE), 0)
    image.paste(glyph, (round(centre[0] - width / 2), round(centre[1] - height / 2)))
    return np.asarray(image, dtype=np.float32) / 255.0


@dataclass(frozen=True)
class GlyphSet:
    """Rendered glyphs: ink [M, 64, 64] float32, letter indices [M] (into LETTERS), font indices [M]
    (into the font tuple they were rendered from)."""

    ink: Tensor
    letters: Tensor
    fonts: Tensor

    def subset(self, members: Tensor) -> "GlyphSet":
        return GlyphSet(self.ink[members], self.letters[members], self.fonts[members])


def render_set(fonts: tuple[Font, ...], renders_per_pair: int, seed: int) -> GlyphSet:
    """`renders_per_pair` jittered renders of every (font, letter), in font-major order."""
    generator = np.random.default_rng(seed)
    images, letter_labels, font_labels = [], [], []
    for font_index, font in enumerate(fonts):
        for letter_index, letter in enumerate(LETTERS):
            for _ in range(renders_per_pair):
                images.append(render(font, letter, generator))
                letter_labels.append(letter_index)
                font_labels.append(font_index)
    return GlyphSet(torch.from_numpy(np.stack(images)), torch.tensor(letter_labels), torch.tensor(font_labels))


def ink_to_rgb(ink: Tensor) -> Tensor:
    """Ink [M, H, W] -> ComfyUI IMAGE [M, H, W, 3] in [0, 1]: black glyphs on white."""
    return (1.0 - ink).unsqueeze(-1).expand(*ink.shape, 3).contiguous()


def rgb_to_ink(images: Tensor) -> Tensor:
    """ComfyUI IMAGE [M, H, W, 3] in [0, 1] -> ink [M, H, W] (1 - the mean of the channels, clamped)."""
    return (1.0 - images.float().mean(dim=-1)).clamp(0.0, 1.0)
