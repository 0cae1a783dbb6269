"""Contextual Repulsion (MODEL in, MODEL out): repel the batch's token streams inside diffusion transformers.

After each chosen block, the text (or image) tokens of every sample are moved up the batch's log-Vendi
entropy (`kernels/contextual.py`), chunk by chunk of `transformer_options["cond_or_uncond"]`, so that cond
and uncond are never mixed. Everything that differs between model families is one row of FAMILIES:
which blocks, where their output holds the text and the image tokens, and how the node reaches a block's
output. Two ways, both public ComfyUI mechanisms on a clone of the MODEL, so the input MODEL is untouched:

- PATCHES_REPLACE, where the model offers it (Flux, Flux 2, Kontext, Chroma, SD3, Qwen-Image, HunyuanVideo /
  HunyuanImage 2.1): ComfyUI's
  block-replace patches `transformer_options["patches_replace"]["dit"][(name, i)]`, called as
  `patch(args, {"original_block": block})`. The node's patch runs the block (through the patch that was
  already there, if any, so that both act) and post-processes its output.
- FORWARD_HOOKS, for families whose blocks ComfyUI offers no replace patch (HiDream and Lumina 2 / Z-Image,
  in 0.3.75 and 0.12.1; 0.12.1 adds a post-block list `patches["double_block"]` to Lumina 2, which 0.3.75
  lacks, so one mechanism serves both): a DIFFUSION_MODEL wrapper (`ModelPatcher.add_wrapper_with_key`,
  `comfy.patcher_extension`) that registers a torch forward hook on the block for one call of the
  diffusion model and removes it when the call returns. The wrapper lives in the clone's wrappers, so only
  that MODEL's calls run it, and the hook never outlives the call, so other MODELs sharing the same
  network never see it. No ComfyUI code is replaced.

Joint streams (text and image tokens in one tensor: the single blocks of Flux, HunyuanVideo and HiDream,
every Lumina 2 block) are split by the length of their leading part, which a recorder notes in the call's
`transformer_options` at an earlier block (one dict per model call, passed to every block).
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import comfy.model_management
import comfy.patcher_extension
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..kernels.contextual import ContextualSettings, repel_streams, select_blocks
from ..kernels.guidance import in_schedule_window
from .validation import require_finite_numbers

LOG = logging.getLogger("particle_repulsion")
CATEGORY = "particle_repulsion/contextual"
STREAMS = ("text", "image")
DOUBLE_ONLY, DOUBLE_AND_SINGLE = "double", "double + single"
BLOCK_TYPES = (DOUBLE_ONLY, DOUBLE_AND_SINGLE)
LEADING, TRAILING = "leading", "trailing"
LEADING_TOKENS_OPTION = "particle_repulsion_leading_tokens"
WRAPPER_KEY = "particle_repulsion_contextual"
UNET_MESSAGE = ("Contextual Repulsion works inside diffusion transformers, and this model is a UNet (SD1.x, "
                "SD2, SDXL...), which has no token streams to repel. For UNet models use the Repulsive KSampler "
                "or the Repulsive Sampler node instead.")

AfterBlock = Callable[[Any, dict], Any]  # (a block's output, the call's transformer_options) -> the output to use


class UnsupportedModel(ValueError):
    """The MODEL is not a diffusion transformer this node knows how to patch."""


@dataclass(frozen=True)
class Slot:
    """Where one stream `[B, T, D]` lies in a block's output.

    key: the output's entry holding it (a dict key or a tuple index), None when the output is the stream.
    part: None for the whole entry; LEADING or TRAILING for the first
    `transformer_options[LEADING_TOKENS_OPTION]` tokens of a joint stream or the tokens after them.
    """

    key: str | int | None = None
    part: str | None = None

    def read(self, output, transformer_options: dict) -> torch.Tensor | None:
        entry = self._entry(output)
        if entry is None or self.part is None:
            return entry
        split = transformer_options[LEADING_TOKENS_OPTION]
        return entry[:, :split] if self.part == LEADING else entry[:, split:]

    def write(self, output, transformer_options: dict, stream: torch.Tensor):
        """A new output (dict, tuple or tensor) with `stream` in this slot; `output` is not modified."""
        if self.part is not None:
            entry, split = self._entry(output), transformer_options[LEADING_TOKENS_OPTION]
            parts = (stream, entry[:, split:]) if self.part == LEADING else (entry[:, :split], stream)
            stream = torch.cat(parts, dim=1)
        if self.key is None:
            return stream
        if isinstance(output, tuple):
            return output[:self.key] + (stream,) + output[self.key + 1:]
        return {**output, self.key: stream}

    def _entry(self, output):
        return output if self.key is None else output[self.key]


@dataclass(frozen=True)
class Blocks:
    """One stack of blocks of a network.

    name: ComfyUI's block-replace name (`("double_block", i)`), also the name in messages.
    modules: the network's attribute holding the blocks (an nn.ModuleList).
    text, image: where each block's output holds the text and the image tokens.
    """

    name: str
    modules: str
    text: Slot
    image: Slot | None = None

    def count(self, network) -> int:
        return len(getattr(network, self.modules))

    def slot(self, stream: str) -> Slot:
        return self.text if stream == "text" else self.image


class ChainedBlockPatch:
    """A `patches_replace["dit"]` entry: runs the block, through the patch that was on it before (if any,
    so that both run), then hands the block's output to `after_block`."""

    def __init__(self, after_block: AfterBlock, previous_patch=None):
        self.after_block = after_block
        self.previous_patch = previous_patch

    def __call__(self, args: dict, extra: dict) -> dict:
        if self.previous_patch is None:
            output = extra["original_block"](args)
        else:
            output = self.previous_patch(args, extra)
        return self.after_block(output, args["transformer_options"])


class PatchesReplace:
    """Reach a block's output through ComfyUI's block-replace patches (see the module docstring)."""

    def install(self, model, blocks: Blocks, index: int, after_block: AfterBlock) -> None:
        key = (blocks.name, index)
        previous = model.model_options["transformer_options"].get("patches_replace", {}).get("dit", {}).get(key)
        model.set_model_patch_replace(ChainedBlockPatch(after_block, previous), "dit", *key)


class BlockHookWrapper:
    """A DIFFUSION_MODEL wrapper: while the diffusion model runs, `after_block` is a forward hook on block
    `index` of the network's `modules`. The block must receive `transformer_options` as a keyword."""

    def __init__(self, modules: str, index: int, after_block: AfterBlock):
        self.modules = modules
        self.index = index
        self.after_block = after_block

    def __call__(self, executor, *args, **kwargs):
        block = getattr(executor.class_obj, self.modules)[self.index]
        handle = block.register_forward_hook(self._after_forward, with_kwargs=True)
        try:
            return executor(*args, **kwargs)
        finally:
            handle.remove()

    def _after_forward(self, block, args: tuple, kwargs: dict, output):
        return self.after_block(output, kwargs["transformer_options"])


class ForwardHooks:
    """Reach a block's output through forward hooks that a DIFFUSION_MODEL wrapper holds for one call."""

    def install(self, model, blocks: Blocks, index: int, after_block: AfterBlock) -> None:
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                   BlockHookWrapper(blocks.modules, index, after_block))


PATCHES_REPLACE, FORWARD_HOOKS = PatchesReplace(), ForwardHooks()


@dataclass(frozen=True)
class Family:
    """A diffusion-transformer family: what the node patches and how.

    network: the dotted path of ComfyUI's network class (a family this ComfyUI lacks is skipped).
    hook: PATCHES_REPLACE or FORWARD_HOOKS.
    double: the blocks the paper repels, where text and image tokens meet (Lumina 2's are joint).
    single: the single-stream blocks repelled too with "double + single", if the family has them.
    leading_tokens: (blocks, stream): the joint streams' leading part is as long as this stream in the
    output of the last of these blocks.
    """

    name: str
    network: str
    hook: PatchesReplace | ForwardHooks
    double: Blocks
    single: Blocks | None = None
    leading_tokens: tuple[Blocks, str] | None = None

    def network_class(self) -> type | None:
        module_name, class_name = self.network.rsplit(".", 1)
        try:
            return getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            return None


# Flux's double blocks return {"img", "txt"}; its single blocks one joint stream "img" = [text | image].
FLUX_DOUBLE = Blocks("double_block", "double_blocks", text=Slot("txt"), image=Slot("img"))
FLUX_SINGLE = Blocks("single_block", "single_blocks", text=Slot("img", LEADING), image=Slot("img", TRAILING))
# HiDream's double blocks return (image, text), the text ending with this block's Llama tokens (dropped after the
# block); its single blocks one joint stream [image | text].
HIDREAM_DOUBLE = Blocks("double_block", "double_stream_blocks", text=Slot(1), image=Slot(0))
FAMILIES = (
    Family("Flux / Flux 2 / Kontext", "comfy.ldm.flux.model.Flux", PATCHES_REPLACE, FLUX_DOUBLE, FLUX_SINGLE,
           (FLUX_DOUBLE, "text")),
    Family("Chroma", "comfy.ldm.chroma.model.Chroma", PATCHES_REPLACE, FLUX_DOUBLE, FLUX_SINGLE,
           (FLUX_DOUBLE, "text")),
    Family("SD3 / SD3.5", "comfy.ldm.modules.diffusionmodules.mmdit.MMDiT", PATCHES_REPLACE,
           Blocks("double_block", "joint_blocks", text=Slot("txt"), image=Slot("img"))),
    Family("Qwen-Image", "comfy.ldm.qwen_image.model.QwenImageTransformer2DModel", PATCHES_REPLACE,
           Blocks("double_block", "transformer_blocks", text=Slot("txt"), image=Slot("img"))),
    # HunyuanVideo, HunyuanImage 2.1: Flux's layout, but the single blocks' joint stream is [image | text].
    Family("HunyuanVideo / HunyuanImage 2.1", "comfy.ldm.hunyuan_video.model.HunyuanVideo", PATCHES_REPLACE,
           FLUX_DOUBLE,
           Blocks("single_block", "single_blocks", text=Slot("img", TRAILING), image=Slot("img", LEADING)),
           (FLUX_DOUBLE, "image")),
    Family("HiDream", "comfy.ldm.hidream.model.HiDreamImageTransformer2DModel", FORWARD_HOOKS, HIDREAM_DOUBLE,
           Blocks("single_block", "single_stream_blocks", text=Slot(None, TRAILING), image=Slot(None, LEADING)),
           (HIDREAM_DOUBLE, "image")),
    # Lumina 2 / Z-Image: every block holds one joint stream [text | image]; the text part is as long as the
    # caption after its refiner (padded, on Z-Image, to a multiple of 32).
    Family("Lumina 2 / Z-Image", "comfy.ldm.lumina.model.NextDiT", FORWARD_HOOKS,
           Blocks("joint_block", "layers", text=Slot(None, LEADING), image=Slot(None, TRAILING)),
           leading_tokens=(Blocks("context_refiner", "context_refiner", text=Slot()), "text")),
)


def model_family(model) -> Family:
    """The family of a MODEL's diffusion transformer; UnsupportedModel naming the model for anything else."""
    network = model.model.diffusion_model
    for family in FAMILIES:
        network_class = family.network_class()
        if network_class is not None and isinstance(network, network_class):
            return family
    if isinstance(network, UNetModel):
        raise UnsupportedModel(UNET_MESSAGE)
    supported = ", ".join(family.name for family in FAMILIES)
    raise UnsupportedModel(f"Contextual Repulsion does not support {type(model.model.model_config).__name__} "
                           f"models (network {type(network).__name__}); it supports {supported}. For other "
                           "models use the Repulsive KSampler or the Repulsive Sampler node.")


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


class SlotRepulsion:
    """After a block: repel the stream in `slot` of its output (a block without that stream, such as SD3's
    last one, which emits no text, passes unchanged)."""

    def __init__(self, repulsion: StreamRepulsion, slot: Slot):
        self.repulsion = repulsion
        self.slot = slot

    def __call__(self, output, transformer_options: dict):
        streams = self.slot.read(output, transformer_options)
        if streams is None:
            return output
        repelled = self.repulsion(streams, transformer_options)
        return output if repelled is streams else self.slot.write(output, transformer_options, repelled)


class LeadingTokensRecorder:
    """After a block: note in the call's `transformer_options` how many tokens the stream in `slot` has,
    the length of the leading part of the joint streams that later blocks receive.

    The count travels with the model call, not in an object shared between patches: ModelPatcher.clone
    deep-copies patches, and other packs' patches may hold on to ours, so shared state could silently
    split in two."""

    def __init__(self, slot: Slot):
        self.slot = slot

    def __call__(self, output, transformer_options: dict):
        transformer_options[LEADING_TOKENS_OPTION] = self.slot.read(output, transformer_options).shape[1]
        return output


def patch_contextual_repulsion(model, settings: ContextualSettings, stream: str, block_types: str,
                               block_start: float, block_end: float):
    """A clone of `model` with contextual repulsion of `stream` in the family's double (and optionally
    single) blocks whose position in their stack lies in `[block_start, block_end)`."""
    family = model_family(model)
    network = model.model.diffusion_model
    chosen = [(blocks, select_blocks(blocks.count(network), block_start, block_end))
              for blocks in _repelled_blocks(family, block_types)]
    if not any(indices for _, indices in chosen):
        raise ValueError(f"The block range {block_start}-{block_end} contains none of this {family.name} model's "
                         f"{family.double.count(network)} {family.double.name}s; widen block_start/block_end.")
    patched = model.clone()
    if any(indices and blocks.slot(stream).part for blocks, indices in chosen):
        recorded_blocks, recorded_stream = family.leading_tokens
        family.hook.install(patched, recorded_blocks, recorded_blocks.count(network) - 1,
                            LeadingTokensRecorder(recorded_blocks.slot(recorded_stream)))
    repulsion = StreamRepulsion(settings)
    for blocks, indices in chosen:
        for index in indices:
            family.hook.install(patched, blocks, index, SlotRepulsion(repulsion, blocks.slot(stream)))
    return patched


def _repelled_blocks(family: Family, block_types: str) -> list[Blocks]:
    if block_types == DOUBLE_ONLY:
        return [family.double]
    if family.single is None:
        LOG.warning("Particle Repulsion (contextual): %s models have no single-stream blocks; repelling in "
                    "the %ss only.", family.name, family.double.name)
        return [family.double]
    return [family.double, family.single]


class ContextualRepulsion:
    """MODEL in, MODEL out: contextual repulsion inside the transformer blocks of a diffusion transformer."""

    DESCRIPTION = ("Makes the images of one batch differ in what they depict, not just in noise: during the "
                   "first steps, inside the middle transformer blocks, the text-token stream of each image is "
                   "pushed away from the others' (Dahary et al., contextual repulsion). For Flux, Flux 2, "
                   "Kontext, Chroma, SD3/SD3.5, Qwen-Image, HiDream, Lumina 2, Z-Image and HunyuanImage "
                   "2.1 / HunyuanVideo models; use a batch size of 2 or more. Step size 0 is "
                   "exactly the unpatched model. For UNet models (SD1.x, SDXL) use the Repulsive KSampler "
                   "instead.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with contextual repulsion; connect it to any sampler.",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A Flux, Flux 2, Chroma, SD3/SD3.5, Qwen-Image, HiDream, Lumina 2, "
                                           "Z-Image or HunyuanImage 2.1 / HunyuanVideo model."}),
            "step_size": ("FLOAT", {
                "default": 0.05, "min": 0.0, "max": 10.0, "step": 0.005,
                "tooltip": "How far each iteration turns an image's token stream away from the others: radians "
                           "per unit of diversity slope, the same scale for every model (the slope stays below "
                           "about 0.7, so 0.05 turns a stream by at most ~2 degrees). 0 = off."}),
            "iterations": ("INT", {
                "default": 2, "min": 1, "max": 20,
                "tooltip": "Small steps per patched block and model call. More steps push harder and cost "
                           "one small N x N eigendecomposition each."}),
            "stream": (list(STREAMS), {
                "default": "text",
                "tooltip": "text: repel the text-token (contextual) stream, as in the paper: varies what is "
                           "depicted. image: repel the image tokens instead: varies layout and texture."}),
            "blocks": (list(BLOCK_TYPES), {
                "default": DOUBLE_ONLY,
                "tooltip": "double: the blocks where text and image tokens meet, as in the paper: the "
                           "double-stream blocks (Lumina 2 and Z-Image, which have only joint blocks: all of "
                           "them). double + single: also the single-stream blocks in the same range (Flux, "
                           "Flux 2, Chroma, HiDream, HunyuanVideo)."}),
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
        require_finite_numbers({"step_size": step_size, "block_start": block_start, "block_end": block_end,
                                "start": start, "end": end})
        settings = ContextualSettings(step_size=step_size, iterations=iterations, start=start, end=end)
        return (patch_contextual_repulsion(model, settings, stream, blocks, block_start, block_end),)
