"""CLIP Vision Embedder: the user's CLIP vision model on the predicted image, with gradients (ComfyUI glue).

The node copies the loaded CLIP vision model once into a frozen, differentiable tower
(`embedders.clip_vision.FrozenVisionTower`) and hands out a recipe holding it. When sampling starts, the
recipe picks the decoder that turns the model's latents into the image CLIP looks at:

- TAESD, when `models/vae_approx` holds the decoder ComfyUI's previews would use for this latent format
  (`taesd_decoder`, `taesdxl_decoder`, `taesd3_decoder`, `taef1_decoder`), as a `.safetensors` file: the
  pack reads its weights itself into ComfyUI's TAESD decoder network, outside inference mode. Pickle
  files (`.pth`) are never read: unpickling can run code.
- else the model's linear latent-to-RGB preview factors.

Device and dtype: the copy is float32 and moves with the embedder to the sampling device (the repulsion
node does that). ComfyUI stores CLIP vision weights in float16 but computes in float32 (its
`manual_cast` ops cast every weight to the float32 input), so float32 gives the features ComfyUI's own
`encode_image` gives, and gradients without float16 overflow; it costs twice the float16 memory
(1.2 GB for ViT-L/14, 2.5 GB for ViT-H/14).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import folder_paths
import torch
from safetensors.torch import load_file

from ..embedders.clip_vision import ClipVisionEmbedder, FrozenVisionTower, ImageDecoder, latent_rgb_decoder
from .embedder_nodes import CATEGORY, EMBEDDER_OUTPUT_TOOLTIP
from .embedder_recipes import latent_format_name

LOG = logging.getLogger("particle_repulsion")

DECODERS = ("auto", "taesd", "latent_rgb")
VAE_APPROX = "vae_approx"
# The image TAESD decoders ComfyUI knows (latent_format.taesd_decoder_name); video ones are other networks.
IMAGE_TAESD_DECODERS = frozenset({"taesd_decoder", "taesdxl_decoder", "taesd3_decoder", "taef1_decoder"})
TAESD_UPSCALE = 8
# CLIP's input side by default. Measured with benchmarks/bench_cost.py (ViT-L/14 and TAESD against one SD1.5
# UNet evaluation, batch 8, 512 px, CPU): 112 px adds about 7%, 140 px 10%, the model's own 224 px 28%
# (issue 11's budget is 15%).
DEFAULT_IMAGE_SIZE = 112
SAFETENSORS = ".safetensors"
# OpenAI CLIP's pixel statistics, ComfyUI's defaults when a config gives none.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TAESDLookup:
    """What `models/vae_approx` holds for one latent format.

    kind: ComfyUI's decoder name for the format ("taesd_decoder", ...), None when it has no image TAESD;
    file: the `.safetensors` decoder file to use, or None; pickles: decoder files in other formats, never read.
    """

    kind: str | None
    file: str | None = None
    pickles: tuple[str, ...] = ()


def find_taesd_decoder(latent_format) -> TAESDLookup:
    """The TAESD decoder for `latent_format` in ComfyUI's `vae_approx` folders (names starting with its
    decoder name, as ComfyUI's previews look them up; `<kind>.safetensors` preferred)."""
    kind = getattr(latent_format, "taesd_decoder_name", None)
    if kind not in IMAGE_TAESD_DECODERS:
        return TAESDLookup(None)
    candidates = [name for name in folder_paths.get_filename_list(VAE_APPROX)
                  if os.path.basename(name).startswith(kind)]
    safe = sorted((name for name in candidates if name.endswith(SAFETENSORS)),
                  key=lambda name: (os.path.basename(name) != kind + SAFETENSORS, name))
    pickles = tuple(name for name in candidates if not name.endswith(SAFETENSORS))
    return TAESDLookup(kind, safe[0] if safe else None, pickles)


def load_taesd_decoder(file_name: str, latent_channels: int) -> ImageDecoder:
    """The TAESD decoder in `file_name` (in `vae_approx`) as ComfyUI's decoder network with frozen float32
    weights, built and loaded outside inference mode. ValueError naming the file when it does not fit."""
    decoder_class = _taesd_decoder_class()
    with torch.inference_mode(False):
        state = load_file(folder_paths.get_full_path_or_raise(VAE_APPROX, file_name), device="cpu")
        network = decoder_class(latent_channels=latent_channels)
        _check_taesd_state(file_name, state, network.state_dict(), latent_channels)
        network.load_state_dict(state, strict=True)
        network.float().requires_grad_(False).eval()
    return ImageDecoder(network, latent_channels, TAESD_UPSCALE, f"TAESD ({os.path.basename(file_name)})")


def _taesd_decoder_class():
    try:
        from comfy.taesd.taesd import Decoder
    except ImportError as error:
        raise ValueError("This ComfyUI has no TAESD decoder network (comfy.taesd.taesd.Decoder); set the CLIP "
                         "Vision Embedder's decoder to latent_rgb.") from error
    return Decoder


def _check_taesd_state(file_name: str, state: dict, expected: dict, latent_channels: int) -> None:
    name = os.path.basename(file_name)
    if set(state) != set(expected):
        raise ValueError(f"The file {name} in vae_approx is not a TAESD decoder (its tensor names differ).")
    first_conv = "1.weight"
    if first_conv in state and state[first_conv].shape != expected[first_conv].shape:
        raise ValueError(f"The TAESD decoder {name} decodes {state[first_conv].shape[1]}-channel latents, but the "
                         f"model makes {latent_channels}-channel latents; use the TAESD made for this model.")
    mismatched = [key for key in state if state[key].shape != expected[key].shape]
    if mismatched:
        raise ValueError(f"The TAESD decoder {name} has tensors of unexpected shapes ({', '.join(mismatched[:3])}).")
    if not all(torch.isfinite(tensor).all() for tensor in state.values()):
        raise ValueError(f"The TAESD decoder {name} contains NaN or infinite weights.")


def preview_decoder(latent_format) -> ImageDecoder | None:
    """The model's linear latent-to-RGB preview as a decoder, None when its latent format has no factors."""
    factors = getattr(latent_format, "latent_rgb_factors", None)
    if factors is None:
        return None
    with torch.inference_mode(False):
        return latent_rgb_decoder(factors, getattr(latent_format, "latent_rgb_factors_bias", None))


def frozen_tower(clip_vision) -> FrozenVisionTower:
    """The frozen, differentiable float32 copy of a CLIP_VISION's vision tower."""
    model = getattr(clip_vision, "model", None)
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "vision_model"):
        raise ValueError("The clip_vision input is not a CLIP vision model; load one with Load CLIP Vision.")
    with torch.inference_mode(False):
        return FrozenVisionTower(model)


@dataclass(frozen=True, eq=False)
class ClipVisionEmbedderRecipe:
    """The CLIP vision embedder's EMBEDDER: a frozen tower, CLIP's pixel statistics, a decoder choice and
    CLIP's input side (`image_size`, pixels; None = the tower's own).

    The tower is made once per node run (ComfyUI keeps the node's output while its inputs stay the same,
    so later prompts reuse it); TAESD decoders are cached here per file version and channel count.
    """

    tower: FrozenVisionTower
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    decoder: str = "auto"
    image_size: int | None = DEFAULT_IMAGE_SIZE
    _decoders: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def label(self) -> str:
        return "CLIP vision"

    def build(self, latent_channels: int, latent_format) -> torch.nn.Module:
        decoder = self._decoder(latent_channels, latent_format)
        if decoder.latent_channels != latent_channels:
            raise ValueError(f"The CLIP Vision Embedder's decoder, {decoder.name}, reads {decoder.latent_channels}-"
                             f"channel latents, but the model makes {latent_channels}-channel latents.")
        with torch.inference_mode(False):
            return ClipVisionEmbedder(decoder, self.tower, self.mean, self.std, self.image_size)

    def _decoder(self, latent_channels: int, latent_format) -> ImageDecoder:
        if self.decoder not in DECODERS:
            raise ValueError(f"Unknown decoder {self.decoder!r}; choose one of: {', '.join(DECODERS)}.")
        lookup = find_taesd_decoder(latent_format) if self.decoder != "latent_rgb" else TAESDLookup(None)
        if lookup.file is not None:
            decoder = self._taesd(lookup.file, latent_channels)
        elif self.decoder == "taesd":
            raise ValueError(_no_taesd_message(lookup, latent_format))
        else:
            decoder = preview_decoder(latent_format)
            if decoder is None:
                raise ValueError(_no_preview_message(lookup, latent_format, self.decoder))
        LOG.info("Particle Repulsion: the CLIP Vision Embedder decodes %s latents with %s.",
                 _format_label(latent_format), decoder.name)
        return decoder

    def _taesd(self, file_name: str, latent_channels: int) -> ImageDecoder:
        status = os.stat(folder_paths.get_full_path_or_raise(VAE_APPROX, file_name))
        key = (file_name, status.st_mtime_ns, status.st_size, latent_channels)
        if key not in self._decoders:
            self._decoders.clear()  # an older version of the file, or other latents: not needed any more
            self._decoders[key] = load_taesd_decoder(file_name, latent_channels)
        return self._decoders[key]


def _format_label(latent_format) -> str:
    return latent_format_name(latent_format) or "unknown"


def _no_taesd_message(lookup: TAESDLookup, latent_format) -> str:
    name = _format_label(latent_format)
    if lookup.kind is None:
        return (f"The CLIP Vision Embedder's decoder is set to taesd, but ComfyUI knows no image TAESD for {name} "
                "latents; set decoder to auto or latent_rgb.")
    pickles = (f" Found {', '.join(os.path.basename(file) for file in lookup.pickles)}, but the pack reads only "
               ".safetensors files (a pickle file can run code when loaded)." if lookup.pickles else "")
    return (f"The CLIP Vision Embedder's decoder is set to taesd, but models/vae_approx has no {lookup.kind}"
            f"{SAFETENSORS} for this model's {name} latents.{pickles} Put the .safetensors TAESD decoder for this "
            "model there, or set decoder to auto or latent_rgb.")


def _no_preview_message(lookup: TAESDLookup, latent_format, choice: str) -> str:
    name = _format_label(latent_format)
    if choice == "latent_rgb":
        return (f"The CLIP Vision Embedder's decoder is set to latent_rgb, but this model ({name} latents) has no "
                "latent-to-RGB preview factors; set decoder to taesd or auto with a TAESD decoder in "
                "models/vae_approx.")
    taesd = f"no {lookup.kind}{SAFETENSORS} in models/vae_approx" if lookup.kind else "no image TAESD"
    return (f"The CLIP Vision Embedder cannot turn this model's {name} latents into an image: there is {taesd} "
            "and the model has no latent-to-RGB preview factors. Use another embedder for this model.")


class CLIPVisionEmbedder:
    """Your CLIP vision model, on the image each sample is becoming, as the EMBEDDER."""

    DESCRIPTION = (f"{ClipVisionEmbedder.description} Repulsion then pushes the batch apart in what its images "
                   "depict. Each step, the predicted clean latent is decoded by a small decoder (TAESD from "
                   "models/vae_approx when there is one for the model, else the model's latent-to-RGB preview "
                   "factors), resized for CLIP, and embedded; the gradient flows back to the latent. Costs one "
                   "CLIP forward and backward pass per model call, and a float32 copy of the CLIP vision model.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("EMBEDDER",)
    OUTPUT_TOOLTIPS = (EMBEDDER_OUTPUT_TOOLTIP,)
    FUNCTION = "choose"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_vision": ("CLIP_VISION", {"tooltip": "A CLIP vision model from Load CLIP Vision (e.g. "
                                                       "CLIP-ViT-L-14 or CLIP-ViT-H-14)."}),
            "decoder": (list(DECODERS), {
                "default": "auto",
                "tooltip": "How the latent becomes the image CLIP sees. auto: TAESD when models/vae_approx holds "
                           "the .safetensors decoder for the model (taesd_decoder, taesdxl_decoder, "
                           "taesd3_decoder or taef1_decoder), else latent_rgb. taesd: require it. latent_rgb: the "
                           "model's linear preview colours (blurry, but free)."}),
            "image_size": ("INT", {
                "default": DEFAULT_IMAGE_SIZE, "min": 0, "max": 1024, "step": 14,
                "tooltip": f"Side in pixels of the image CLIP sees. {DEFAULT_IMAGE_SIZE} (default) adds about 7% "
                           "to an SD1.5 step at 512 px; 0 = the model's own size (224 for ViT-L/14) sees finer "
                           "detail at about 28% (the cost grows with the square of the side). Rounded down to a "
                           "multiple of the model's patch size (14)."}),
        }}

    def choose(self, clip_vision, decoder, image_size):
        recipe = ClipVisionEmbedderRecipe(frozen_tower(clip_vision),
                                          tuple(getattr(clip_vision, "image_mean", CLIP_MEAN)),
                                          tuple(getattr(clip_vision, "image_std", CLIP_STD)), decoder,
                                          image_size or None)
        return (recipe,)
