"""Fixtures and helpers for the contextual repulsion tests: one tiny model of every supported family, CLIP-L
conditioning, in-process sampling, and probes that look at a block's output inside a real model call.

Import the fixtures into a test module (`from contextual_fixtures import tiny_dit, ...`); they build on
the `comfy` and `tiny_checkpoint` fixtures of conftest.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

BATCH = 4
STEPS = 4
TEXT_TOKENS = 77  # CLIP-L's context length
IMAGE_TOKENS = 16  # 8 x 8 latents in 2 x 2 patches


def no_extras(tokens: torch.Tensor) -> dict:
    return {}


def hidream_llama_states(tokens: torch.Tensor) -> dict:
    """HiDream also listens to hidden states of Llama layers: here, CLIP's tokens stand for each layer."""
    import tiny_transformers

    return {"conditioning_llama3": tokens.unsqueeze(1).repeat(1, tiny_transformers.HIDREAM_LLAMA_LAYERS, 1, 1)}


def reference_latent(*shape: int) -> Callable[[torch.Tensor], dict]:
    """Editing as ReferenceLatent sets it up: one reference latent of `shape`, whose tokens join the image
    stream (Kontext, Qwen-Image Edit, Z-Image editing)."""

    def extras(tokens: torch.Tensor) -> dict:
        return {"reference_latents": [torch.randn(*shape, generator=torch.Generator().manual_seed(11))]}

    return extras


def lumina_takes_reference_latents() -> bool:
    """Whether this ComfyUI's Lumina 2 / Z-Image network edits from reference latents (newer than 0.3.75)."""
    import inspect

    from comfy.ldm.lumina.model import NextDiT

    return "ref_latents" in inspect.signature(NextDiT._forward).parameters


def load_tiny_flux():
    import tiny_models

    return tiny_models.load_tiny_flux()


def load_tiny_sd3():
    """The tiny SD3, loaded from its file by ComfyUI's own detection, as UNETLoader does."""
    import comfy.sd
    import tiny_models

    return comfy.sd.load_diffusion_model(str(tiny_models.ensure(tiny_models.TINY_SD3)))


def tiny_transformer(name: str) -> Callable:
    def load():
        import tiny_transformers

        return tiny_transformers.load(getattr(tiny_transformers, name))

    return load


@dataclass(frozen=True)
class TinyFamily:
    """How the tests drive one family's tiny model.

    family: the name of the node's FAMILIES row it belongs to.
    joint_blocks: "double" or "single", the blocks whose output is one joint stream (None: no such blocks).
    joint_tokens: how many text and image tokens that joint stream holds, in its order.
    extras: extra conditioning keys, from CLIP's tokens [1, 77, 768].
    needs: what the host must offer for this model, checked before it is used (None: every host does).
    """

    name: str
    family: str
    load: Callable
    joint_blocks: str | None = None
    joint_tokens: dict = field(default_factory=dict)
    extras: Callable[[torch.Tensor], dict] = no_extras
    needs: Callable[[], bool] | None = None


FLUX_FAMILY, SD3_FAMILY = "Flux / Flux 2 / Kontext", "SD3 / SD3.5"
TINY_FAMILIES = (
    TinyFamily("flux", FLUX_FAMILY, load_tiny_flux, "single", {"text": TEXT_TOKENS, "image": IMAGE_TOKENS}),
    TinyFamily("kontext", FLUX_FAMILY, load_tiny_flux, "single",
               {"text": TEXT_TOKENS, "image": 2 * IMAGE_TOKENS}, reference_latent(1, 16, 8, 8)),  # + the reference
    # Flux 2: patch size 1 (64 image tokens); ComfyUI pads its text to 512 tokens.
    TinyFamily("flux2", FLUX_FAMILY, tiny_transformer("FLUX2"), "single", {"text": 512, "image": 64}),
    TinyFamily("chroma", "Chroma", tiny_transformer("CHROMA"), "single", {"text": TEXT_TOKENS, "image": IMAGE_TOKENS}),
    # Chroma Radiance: 8 x 8 pixels in 4 x 4 patches.
    TinyFamily("chroma_radiance", "Chroma", tiny_transformer("CHROMA_RADIANCE"), "single",
               {"text": TEXT_TOKENS, "image": 4}),
    TinyFamily("sd3", SD3_FAMILY, load_tiny_sd3),
    TinyFamily("qwen_image", "Qwen-Image", tiny_transformer("QWEN_IMAGE")),
    TinyFamily("qwen_image_edit", "Qwen-Image", tiny_transformer("QWEN_IMAGE"),
               extras=reference_latent(1, 16, 1, 8, 8)),
    # HunyuanImage 2.1: 1 x 1 patches (64 image tokens), single blocks' joint stream [image | text].
    TinyFamily("hunyuan_image", "HunyuanVideo / HunyuanImage 2.1", tiny_transformer("HUNYUAN_IMAGE"), "single",
               {"image": 64, "text": TEXT_TOKENS}),
    # HiDream's single blocks: [image | T5 and last Llama layer's tokens (kept) | this block's Llama tokens].
    TinyFamily("hidream", "HiDream", tiny_transformer("HIDREAM"), "single",
               {"image": IMAGE_TOKENS, "text": 3 * TEXT_TOKENS}, hidream_llama_states),
    TinyFamily("lumina2", "Lumina 2 / Z-Image", tiny_transformer("LUMINA2"), "double",
               {"text": TEXT_TOKENS, "image": IMAGE_TOKENS}),
    # Z-Image pads its caption and image tokens to multiples of 32.
    TinyFamily("zimage", "Lumina 2 / Z-Image", tiny_transformer("ZIMAGE"), "double", {"text": 96, "image": 32}),
    # Z-Image editing, which only newer ComfyUI has (marked newer_comfyui): the reference brings 32 padding caption
    # tokens and 32 image tokens.
    pytest.param(TinyFamily("zimage_edit", "Lumina 2 / Z-Image", tiny_transformer("ZIMAGE"), "double",
                            {"text": 32 + 96, "image": 32 + 32}, reference_latent(1, 16, 8, 8),
                            lumina_takes_reference_latents),
                 marks=pytest.mark.newer_comfyui, id="zimage_edit"),
)


def spec_of(tiny) -> TinyFamily:
    """The TinyFamily of a TINY_FAMILIES entry (some are wrapped in pytest.param with marks)."""
    return tiny.values[0] if hasattr(tiny, "values") else tiny


JOINT_FAMILIES = tuple(tiny for tiny in TINY_FAMILIES if spec_of(tiny).joint_blocks)


@dataclass(frozen=True)
class TinyDiT:
    """A tiny family's spec and its loaded ModelPatcher."""

    spec: TinyFamily
    model: object

    def conditioning(self, base: tuple[list, list]) -> tuple[list, list]:
        """(positive, negative) with this family's extra keys added to every entry."""
        return tuple([[tokens, {**options, **self.spec.extras(tokens)}] for tokens, options in conditioning]
                     for conditioning in base)


def loaded(spec: TinyFamily) -> TinyDiT:
    """`spec` with its model loaded, after checking that the host offers what it needs: a model marked
    `newer_comfyui` fails here on a ComfyUI without that feature rather than passing without it."""
    assert spec.needs is None or spec.needs(), (
        f"this ComfyUI lacks {spec.needs.__name__}, which '{spec.name}' tests; it runs only on the newer hosts "
        "of the compatibility matrix (deselect it elsewhere with -m 'not newer_comfyui')")
    return TinyDiT(spec, spec.load())


@pytest.fixture(scope="session", params=TINY_FAMILIES, ids=lambda tiny: tiny.name)
def tiny_dit(request, comfy) -> TinyDiT:
    """Each supported family's tiny model in turn."""
    return loaded(request.param)


@pytest.fixture(scope="session", params=JOINT_FAMILIES, ids=lambda tiny: tiny.name)
def tiny_joint_dit(request, comfy) -> TinyDiT:
    """Each family with joint-stream blocks in turn."""
    return loaded(request.param)


@pytest.fixture(scope="session")
def tiny_flux(comfy):
    """ModelPatcher around the tiny Flux (built in memory, see scripts/tiny_models.py)."""
    return load_tiny_flux()


@pytest.fixture(scope="session")
def tiny_sd3_file(comfy) -> str:
    """File name (for UNETLoader) of the tiny SD3 diffusion model."""
    import tiny_models

    return tiny_models.ensure(tiny_models.TINY_SD3).name


@pytest.fixture(scope="session")
def tiny_sd3(comfy, tiny_sd3_file):
    return load_tiny_sd3()


@pytest.fixture(scope="session")
def tiny_sd15(comfy, tiny_checkpoint):
    """(ModelPatcher, CLIP) of the tiny SD1.5 checkpoint: a UNet, and the CLIP-L every tiny DiT listens to."""
    import comfy.sd
    import folder_paths

    path = folder_paths.get_full_path_or_raise("checkpoints", tiny_checkpoint)
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=False)
    return model, clip


@pytest.fixture(scope="session")
def conditioning(tiny_sd15):
    """(positive, negative) CONDITIONING from CLIP-L: [1, 77, 768] tokens and a 768 pooled vector."""
    _, clip = tiny_sd15

    def encode(text):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    return encode("a lighthouse at dusk"), encode("blurry")


def sample(model, conditioning, cfg: float, seed: int = 7, batch: int = BATCH, steps: int = STEPS,
           spread: float | None = None) -> torch.Tensor:
    """Final latents of the stock KSampler path (euler, simple) on 64x64 pixels, on one CPU thread (on a
    shared CPU, more threads mostly wait on each other). The noise is ComfyUI's for `seed`, or with a
    `spread`, that of a batch of near-copies (see `near_copy_noise`)."""
    import comfy.sample

    from particle_repulsion.nodes.style_training import one_cpu_thread

    positive, negative = conditioning
    latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros(batch, 4, 8, 8))
    if spread is None:
        noise = comfy.sample.prepare_noise(latent, seed)
    else:
        noise = near_copy_noise(latent.shape, seed, spread)
    with torch.inference_mode(), one_cpu_thread(torch.device("cpu")):
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                                   disable_pbar=True, seed=seed)


def near_copy_noise(shape: torch.Size, seed: int, spread: float) -> torch.Tensor:
    """Unit-variance noise `shape` whose samples share one draw and differ by `spread` times their own:
    a batch that would come out as near-copies, what the node is for."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn((1, *shape[1:]), generator=generator)
    own = torch.randn(shape, generator=generator)
    return (shared + spread * own) / (1 + spread ** 2) ** 0.5


class StreamProbe:
    """An after-block function that records one stream of a block's output at every call (where the node's
    own hook mechanism of the family puts it), with the call's sigma and cond/uncond labels, and passes the
    output on unchanged."""

    def __init__(self, slot):
        self.slot = slot
        self.calls: list[dict] = []

    def __deepcopy__(self, memo):
        return self  # an instrument: every clone of the model (ModelPatcher.clone deep-copies) reports here

    def __call__(self, output, options: dict):
        self.calls.append({"stream": self.slot.read(output, options).clone(),
                           "sigma": float(options["sigmas"].max()), "schedule": options["sample_sigmas"],
                           "chunks": list(options["cond_or_uncond"])})
        return output


def add_probe(model, block_kind: str, index: int, slot=None):
    """A clone of `model` with a StreamProbe after block `index` of its family's `block_kind` ("double" or
    "single") blocks, reading `slot` (default: the text stream); returns (clone, probe).

    A probe added before the node's patch sees the block's output before repulsion, one added after sees
    it after: both hook mechanisms run later additions after earlier ones."""
    from particle_repulsion.nodes.contextual import model_family

    family = model_family(model)
    blocks = getattr(family, block_kind)
    probed, probe = model.clone(), StreamProbe(slot or blocks.text)
    family.hook.install(probed, blocks, index, probe)
    return probed, probe


def chunk_entropies(streams: torch.Tensor, chunk_count: int) -> list[float]:
    """log-Vendi entropy of each cond/uncond chunk of a recorded stream [B, T, D]."""
    from particle_repulsion.kernels import log_vendi_entropy

    return [log_vendi_entropy(chunk.flatten(1).double()).item() for chunk in streams.chunk(chunk_count)]
