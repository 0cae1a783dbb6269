"""Contextual Repulsion (MODEL in, MODEL out): repel the batch's token streams inside Flux / SD3 blocks.

ComfyUI's Flux and MMDiT (SD3, SD3.5) models look up `transformer_options["patches_replace"]["dit"]`
for a replacement of each double-stream block, `("double_block", i)`, and each Flux single-stream block,
`("single_block", i)`, called as `patch(args, {"original_block": block})`. This module installs such
patches on a clone of the MODEL: each runs the block (through the patch that was already there, if
any) and moves the chosen stream of its output up the batch's log-Vendi entropy
(`kernels/contextual.py`), chunk by chunk, so that cond and uncond are never mixed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.model_management
import torch
from comfy.ldm.flux.model import Flux
from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..kernels.contextual import ContextualSettings, repel_streams, select_blocks
from ..kernels.guidance import in_schedule_window

LOG = logging.getLogger("particle_repulsion")
CATEGORY = "particle_repulsion/contextual"
STREAM_KEYS = {"text": "txt", "image": "img"}
TEXT_TOKENS_OPTION = "particle_repulsion_text_tokens"
DOUBLE_ONLY, DOUBLE_AND_SINGLE = "double", "double + single"
BLOCK_TYPES = (DOUBLE_ONLY, DOUBLE_AND_SINGLE)
UNET_MESSAGE = ("Contextual Repulsion works inside diffusion transformers (Flux, SD3, SD3.5), and this model "
                "is a UNet (SD1.x, SD2, SDXL...), which has no token streams to repel. For UNet models use "
                "the Repulsive KSampler or the Repulsive Sampler node instead.")


class UnsupportedModel(ValueError):
    """The MODEL is not a diffusion transformer this node knows how to patch."""


@dataclass(frozen=True)
class TransformerLayout:
    """How many blocks of each kind a supported diffusion transformer has."""

    family: str
    double_blocks: int
    single_blocks: int


def transformer_layout(model) -> TransformerLayout:
    """The block counts of a MODEL's diffusion transformer; UnsupportedModel for anything else."""
    network = model.model.diffusion_model
    if isinstance(network, Flux):
        return TransformerLayout("Flux", len(network.double_blocks), len(network.single_blocks))
    if isinstance(network, MMDiT):
        return TransformerLayout("SD3", len(network.joint_blocks), 0)
    if isinstance(network, UNetModel):
        raise UnsupportedModel(UNET_MESSAGE)
    raise UnsupportedModel(f"Contextual Repulsion supports Flux and SD3/SD3.5 models; this model's network is "
                           f"{type(network).__name__}. For other models use the Repulsive KSampler or the "
                           "Repulsive Sampler node.")


class StreamRepulsion:
    """Repels one block's stream `[B, T, D]` at one model call, if the call lies in the sigma window.

    The batch of a model call is a concatenation of equal chunks, one per entry of
    `transformer_options["cond_or_uncond"]` (cond, uncond, or several conds): each chunk is repelled
    on its own. Outside the window, at step size 0 or with one sample per chunk, the stream is
    returned untouched (the very same tensor).
    """

    def __init__(self, settings: ContextualSettings):
        self.settings = settings
        self._warned: set[str] = set()

    def __call__(self, streams: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        if not self.settings.enabled or not self._in_window(transformer_options):
            return streams
        chunks = self._chunks(streams, transformer_options.get("cond_or_uncond") or [0])
        if chunks is None:
            return streams
        comfy.model_management.throw_exception_if_processing_interrupted()
        return torch.cat([repel_streams(chunk, self.settings) for chunk in chunks])

    def _in_window(self, transformer_options: dict) -> bool:
        sigma, schedule = transformer_options.get("sigmas"), transformer_options.get("sample_sigmas")
        if sigma is None or schedule is None:
            self._warn_once("no sampling schedule reached the model, so the window cannot be placed; "
                            "sampling without contextual repulsion.")
            return False
        return in_schedule_window(float(sigma.max()), schedule, self.settings.start, self.settings.end)

    def _chunks(self, streams: torch.Tensor, chunk_labels: list) -> tuple[torch.Tensor, ...] | None:
        batch, chunk_count = streams.shape[0], len(chunk_labels)
        if batch % chunk_count:
            self._warn_once(f"a batch of {batch} does not split into {chunk_count} cond/uncond chunks; "
                            "sampling without contextual repulsion.")
            return None
        if batch // chunk_count < 2:
            self._warn_once("the batch has one image, there is nothing to repel it from; sampling without "
                            "contextual repulsion. Use a batch size of 2 or more.")
            return None
        return streams.split(batch // chunk_count)

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            LOG.warning("Particle Repulsion (contextual): %s", message)
            self._warned.add(message)


class ChainedBlockPatch:
    """A `patches_replace["dit"]` entry that runs the block, through the patch that was on it before
    (if any, so that both run), then post-processes the block's output in `after_block`."""

    def __init__(self, previous_patch=None):
        self.previous_patch = previous_patch

    def __call__(self, args: dict, extra: dict) -> dict:
        if self.previous_patch is None:
            output = extra["original_block"](args)
        else:
            output = self.previous_patch(args, extra)
        return self.after_block(output, args["transformer_options"])

    def after_block(self, output: dict, transformer_options: dict) -> dict:
        raise NotImplementedError


class DoubleBlockPatch(ChainedBlockPatch):
    """On `("double_block", i)`: repel the text (`txt`) or image (`img`) stream of the block's output."""

    def __init__(self, repulsion: StreamRepulsion, stream_key: str, previous_patch=None):
        super().__init__(previous_patch)
        self.repulsion = repulsion
        self.stream_key = stream_key

    def after_block(self, output: dict, transformer_options: dict) -> dict:
        streams = output.get(self.stream_key)
        if streams is None:  # SD3's last block emits no text stream
            return output
        return {**output, self.stream_key: self.repulsion(streams, transformer_options)}


class TextTokenRecorder(ChainedBlockPatch):
    """On Flux's last double block: notes in the call's `transformer_options` how many text tokens lead
    the joint `[text | image]` stream the single blocks receive.

    The count travels with the model call (one `transformer_options` dict per call, passed to every
    block), not in an object shared between patches: ModelPatcher.clone deep-copies patches, and other
    packs' patches may hold on to ours, so shared state could silently split in two.
    """

    def after_block(self, output: dict, transformer_options: dict) -> dict:
        transformer_options[TEXT_TOKENS_OPTION] = output["txt"].shape[1]
        return output


class SingleBlockPatch(ChainedBlockPatch):
    """On `("single_block", i)` (Flux): the joint stream is `[text | image]` tokens; repel the text part
    or the image part."""

    def __init__(self, repulsion: StreamRepulsion, stream: str, previous_patch=None):
        super().__init__(previous_patch)
        self.repulsion = repulsion
        self.stream = stream

    def after_block(self, output: dict, transformer_options: dict) -> dict:
        text_tokens = transformer_options[TEXT_TOKENS_OPTION]
        joint = output["img"]
        parts = {"text": joint[:, :text_tokens], "image": joint[:, text_tokens:]}
        repelled = self.repulsion(parts[self.stream], transformer_options)
        if repelled is parts[self.stream]:
            return output
        parts[self.stream] = repelled
        return {**output, "img": torch.cat((parts["text"], parts["image"]), dim=1)}


def patch_contextual_repulsion(model, settings: ContextualSettings, stream: str, block_types: str,
                               block_start: float, block_end: float):
    """A clone of `model` with contextual repulsion in the double (and optionally single) blocks whose
    position in the stack lies in `[block_start, block_end)`."""
    layout = transformer_layout(model)
    double_indices = select_blocks(layout.double_blocks, block_start, block_end)
    single_indices = _single_block_indices(layout, block_types, block_start, block_end)
    if not double_indices and not single_indices:
        raise ValueError(f"The block range {block_start}-{block_end} contains none of this {layout.family} "
                         f"model's {layout.double_blocks} double-stream blocks; widen block_start/block_end.")
    patched = model.clone()
    repulsion = StreamRepulsion(settings)
    for index in double_indices:
        chain_block_patch(patched, ("double_block", index),
                          lambda previous: DoubleBlockPatch(repulsion, STREAM_KEYS[stream], previous))
    if single_indices:
        chain_block_patch(patched, ("double_block", layout.double_blocks - 1), TextTokenRecorder)
    for index in single_indices:
        chain_block_patch(patched, ("single_block", index),
                          lambda previous: SingleBlockPatch(repulsion, stream, previous))
    return patched


def chain_block_patch(model, block: tuple[str, int], make_patch) -> None:
    """Put `make_patch(previous)` on `block` of `model`, where `previous` is the patch already on that block
    (None if there is none), so that both run."""
    previous = model.model_options["transformer_options"].get("patches_replace", {}).get("dit", {}).get(block)
    model.set_model_patch_replace(make_patch(previous), "dit", *block)


def _single_block_indices(layout: TransformerLayout, block_types: str, block_start: float,
                          block_end: float) -> list[int]:
    if block_types != DOUBLE_AND_SINGLE:
        return []
    if layout.single_blocks == 0:
        LOG.warning("Particle Repulsion (contextual): %s models have no single-stream blocks; "
                    "repelling in the double-stream blocks only.", layout.family)
    return select_blocks(layout.single_blocks, block_start, block_end)


class ContextualRepulsion:
    """MODEL in, MODEL out: contextual repulsion inside the transformer blocks of Flux and SD3/SD3.5."""

    DESCRIPTION = ("Makes the images of one batch differ in what they depict, not just in noise: during the "
                   "first steps, inside the middle transformer blocks, the text-token stream of each image is "
                   "pushed away from the others' (Dahary et al., contextual repulsion). For Flux and "
                   "SD3/SD3.5 models; use a batch size of 2 or more. Step size 0 is exactly the unpatched model. "
                   "For UNet models (SD1.x, SDXL) use the Repulsive KSampler instead.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with contextual repulsion; connect it to any sampler.",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A Flux or SD3/SD3.5 model."}),
            "step_size": ("FLOAT", {
                "default": 0.05, "min": 0.0, "max": 10.0, "step": 0.005,
                "tooltip": "How far each iteration turns an image's token stream away from the others: radians "
                           "per unit of diversity slope, the same scale for every model (the slope stays below "
                           "about 0.7, so 0.05 turns a stream by at most ~2 degrees). 0 = off."}),
            "iterations": ("INT", {
                "default": 2, "min": 1, "max": 20,
                "tooltip": "Small steps per patched block and model call. More steps push harder and cost "
                           "one small N x N eigendecomposition each."}),
            "stream": (list(STREAM_KEYS), {
                "default": "text",
                "tooltip": "text: repel the text-token (contextual) stream, as in the paper: varies what is "
                           "depicted. image: repel the image tokens instead: varies layout and texture."}),
            "blocks": (list(BLOCK_TYPES), {
                "default": DOUBLE_ONLY,
                "tooltip": "double: the double-stream (joint) blocks, as in the paper. double + single: also "
                           "Flux's single-stream blocks in the same range (SD3 has none)."}),
            "block_start": ("FLOAT", {
                "default": 0.33, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "First block to patch, as a fraction of the block stack (0 = first block). "
                           "The default range 0.33-0.67 is the middle third, where the paper found it best."}),
            "block_end": ("FLOAT", {
                "default": 0.67, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "End of the patched block range, as a fraction of the block stack (1 = last block)."}),
            "start": ("FLOAT", {
                "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Start repelling at this fraction of the sampling schedule (0 = first step)."}),
            "end": ("FLOAT", {
                "default": 0.1, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Stop repelling at this fraction of the schedule (excluded): end = k / steps "
                           "repels in the first k steps. The paper acts only early: 1 of 20 steps on Flux-dev, "
                           "4 of 28 on SD3.5-Large."}),
        }}

    def patch(self, model, step_size, iterations, stream, blocks, block_start, block_end, start, end):
        settings = ContextualSettings(step_size=step_size, iterations=iterations, start=start, end=end)
        return (patch_contextual_repulsion(model, settings, stream, blocks, block_start, block_end),)
