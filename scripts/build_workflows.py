"""Write the pack's example workflows into workflows/ (UI format, what users drag into ComfyUI).

Each workflow is described below in a compact form; `workflow_format.to_ui_format` lays it out using a
running host's /object_info, so widget order and slot types are exactly what this ComfyUI expects.
The files are committed; re-run this script after changing a node's inputs:

    .host/venv/bin/python scripts/build_workflows.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_host  # noqa: E402
from comfy_server import ComfyServer  # noqa: E402
from workflow_format import WorkflowNode, note, to_ui_format  # noqa: E402

WORKFLOWS_DIR = comfy_host.REPO / "workflows"
SD15_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
PROMPT = "a lighthouse on a cliff at dusk, oil painting, dramatic sky"
NEGATIVE = "blurry, low quality"
SEED = 42
COLUMN = 360
SAMPLER_ROW = 700  # a Repulsive KSampler with all its widgets is about 650 px tall
# The repulsion widgets as the nodes ship them; STYLE_REPULSION for a style embedder's class probabilities.
REPULSION = {"strength": 0.5, "strength_mode": "relative", "space": "denoised", "kernel": "rbf", "bandwidth": 0.0,
             "start": 0.0, "end": 1.0, "objective": "log_vendi"}
STYLE_REPULSION = {**REPULSION, "strength": 1.0, "objective": "collision"}
SAMPLING = {"seed": SEED, "steps": 20, "cfg": 7.0, "sampler_name": "euler_ancestral", "scheduler": "karras",
            "denoise": 1.0}
STYLE_FILE = "my_styles"
SAMPLER_LINKS = {"model": ("checkpoint", 0), "positive": ("positive", 0), "negative": ("negative", 0),
                 "latent_image": ("latent", 0)}


def sd15_inputs(batch_size: int = 4, size: int = 512) -> list[WorkflowNode]:
    """Checkpoint, the two prompts and an empty latent batch: the left column of every SD1.5 workflow."""
    return [
        WorkflowNode("checkpoint", "CheckpointLoaderSimple", (0, 0), {"ckpt_name": SD15_CHECKPOINT}),
        WorkflowNode("positive", "CLIPTextEncode", (0, 160), {"text": PROMPT}, {"clip": ("checkpoint", 1)},
                     title="Positive prompt"),
        WorkflowNode("negative", "CLIPTextEncode", (0, 420), {"text": NEGATIVE}, {"clip": ("checkpoint", 1)},
                     title="Negative prompt"),
        WorkflowNode("latent", "EmptyLatentImage", (0, 680), {"width": size, "height": size, "batch_size": batch_size}),
    ]


def decoded_and_saved(key: str, x: float, y: float, prefix: str) -> list[WorkflowNode]:
    return [WorkflowNode(f"{key}_decode", "VAEDecode", (x, y), links={"samples": (key, 0), "vae": ("checkpoint", 2)}),
            WorkflowNode(f"{key}_save", "SaveImage", (x + COLUMN, y), {"filename_prefix": prefix},
                         {"images": (f"{key}_decode", 0)}, size=(400, 300))]


def repulsive_batch() -> list[WorkflowNode]:
    return [
        *sd15_inputs(),
        WorkflowNode("plain", "KSampler", (COLUMN, 0), SAMPLING, SAMPLER_LINKS, title="Plain batch (stock KSampler)"),
        *decoded_and_saved("plain", 2 * COLUMN, 0, "repulsion/plain"),
        WorkflowNode("repelled", "ParticleRepulsionKSampler", (COLUMN, 420), {**SAMPLING, **REPULSION}, SAMPLER_LINKS,
                     title="Repelled batch (same seed)"),
        *decoded_and_saved("repelled", 2 * COLUMN, 420, "repulsion/repelled"),
        note("about", (0, SAMPLER_ROW + 420), (
            "Repulsive batch vs plain batch\n\n"
            "Both samplers start from the same seed and batch. The Repulsive KSampler pushes the four images "
            "apart while they are still mostly noise, so the lower row should vary more (composition, colour) "
            "than the upper one.\n\n"
            "The defaults work on every model family (SD1.5, SDXL, v-prediction, SD3, Flux, turbo): strength 0.5 "
            "is clear at a small cost, 1-2 strong. The push fades out as the images become clean and never runs "
            "along their noise, so it cannot leave noise behind.\n"
            "objective: log_vendi (the batch's entropy) by default; kernel_sum is the thesis's SVGD term.\n"
            "For SDXL, load an SDXL checkpoint and use 1024x1024: nothing else changes."), size=(680, 260)),
    ]


GALLERY_ROWS_PER_BLOCK = 5
GALLERY_BLOCK_WIDTH = 3 * COLUMN + 480


def gallery_row_origin(row: int) -> tuple[float, float]:
    """Top-left of gallery row `row` (0 = no repulsion); rows stack in blocks placed side by side."""
    block, row_in_block = divmod(row, GALLERY_ROWS_PER_BLOCK)
    return COLUMN + block * GALLERY_BLOCK_WIDTH, row_in_block * SAMPLER_ROW


def gallery_row(key: str, embedder: str | None, row: int) -> list[WorkflowNode]:
    """One row: [embedder ->] Repulsive KSampler -> VAE Decode -> Preview, all at the same seed."""
    x, y = gallery_row_origin(row)
    sampler_links, settings, nodes = dict(SAMPLER_LINKS), {**SAMPLING, **REPULSION}, []
    if embedder is None:
        settings["strength"] = 0.0
    else:
        nodes.append(WorkflowNode(f"{key}_embedder", "ParticleRepulsionEmbedder", (x, y),
                                  {"embedder": embedder, "seed": 0, "grid_size": 4}))
        sampler_links["embedder"] = (f"{key}_embedder", 0)
    label = embedder or "no repulsion"
    return nodes + [
        WorkflowNode(key, "ParticleRepulsionKSampler", (x + COLUMN, y), settings, sampler_links,
                     title=f"Repelled in {embedder}" if embedder else "No repulsion (strength 0)"),
        WorkflowNode(f"{key}_decode", "VAEDecode", (x + 2 * COLUMN, y), links={"samples": (key, 0), "vae": ("checkpoint", 2)}),
        WorkflowNode(f"{key}_preview", "PreviewImage", (x + 3 * COLUMN, y), links={"images": (f"{key}_decode", 0)},
                     title=label, size=(400, 400)),
    ]


def embedder_gallery(embedders: list[str]) -> list[WorkflowNode]:
    nodes = [*sd15_inputs(batch_size=4), *gallery_row("plain", None, 0)]
    for row, embedder in enumerate(embedders, start=1):
        nodes += gallery_row(f"row_{embedder}", embedder, row)
    nodes.append(note("about", (0, 900), (
        "Embedder gallery\n\n"
        "Same seed and batch on every row; each row repels in a different embedding space, i.e. makes a different "
        "property diverse:\n"
        "latent: everything, weakly; channel_mean: overall colour/tone; pooled_grid: coarse layout; "
        "rule_of_thirds: composition along the thirds; edges: where the mass of the image sits; random_cnn: "
        "texture and shape; random_cnn_gram: style-like texture statistics; latent_rgb: colour layout.\n\n"
        "Compare each row with the first one (no repulsion)."), size=(340, 360)))
    return nodes


def sampler_custom_advanced() -> list[WorkflowNode]:
    return [
        *sd15_inputs(),
        WorkflowNode("guider", "CFGGuider", (COLUMN, 0), {"cfg": 7.0},
                     {"model": ("checkpoint", 0), "positive": ("positive", 0), "negative": ("negative", 0)}),
        WorkflowNode("base_sampler", "KSamplerSelect", (COLUMN, 200), {"sampler_name": "dpmpp_2m"}),
        WorkflowNode("repulsive_sampler", "ParticleRepulsionSampler", (COLUMN, 320), REPULSION,
                     {"sampler": ("base_sampler", 0)}),
        WorkflowNode("sigmas", "BasicScheduler", (COLUMN, 640), {"scheduler": "karras", "steps": 20, "denoise": 1.0},
                     {"model": ("checkpoint", 0)}),
        WorkflowNode("noise", "RandomNoise", (COLUMN, 820), {"noise_seed": SEED}),
        WorkflowNode("sampled", "SamplerCustomAdvanced", (2 * COLUMN, 0), links={
            "noise": ("noise", 0), "guider": ("guider", 0), "sampler": ("repulsive_sampler", 0),
            "sigmas": ("sigmas", 0), "latent_image": ("latent", 0)}),
        *decoded_and_saved("sampled", 2 * COLUMN, 420, "repulsion/custom_advanced"),
        note("about", (0, 900), (
            "Repulsive Sampler inside SamplerCustomAdvanced\n\n"
            "Any SAMPLER (here dpmpp_2m from KSamplerSelect) goes through the Repulsive Sampler node and comes out "
            "with batch repulsion; guider, sigmas and noise stay yours. Works with every sampler, including "
            "ancestral, SDE, multistep and adaptive ones."), size=(340, 200)),
    ]


def diversity_report() -> list[WorkflowNode]:
    return [
        *sd15_inputs(),
        WorkflowNode("plain", "KSampler", (COLUMN, 0), SAMPLING, SAMPLER_LINKS, title="Without repulsion"),
        WorkflowNode("repelled", "ParticleRepulsionKSampler", (COLUMN, 420), {**SAMPLING, **REPULSION}, SAMPLER_LINKS,
                     title="With repulsion (same seed)"),
        WorkflowNode("plain_decode", "VAEDecode", (2 * COLUMN, 0), links={"samples": ("plain", 0), "vae": ("checkpoint", 2)}),
        WorkflowNode("repelled_decode", "VAEDecode", (2 * COLUMN, 420),
                     links={"samples": ("repelled", 0), "vae": ("checkpoint", 2)}),
        WorkflowNode("compare", "ParticleRepulsionDiversityCompare", (3 * COLUMN, 0),
                     {"features": "auto", "aspect": "whole", "prompt_groups": 1, "label_a": "without",
                      "label_b": "with", "plot_width": 768, "plot_height": 768},
                     {"images_a": ("plain_decode", 0), "images_b": ("repelled_decode", 0)}, size=(560, 900)),
        note("about", (0, SAMPLER_ROW + 420), (
            "Diversity report: with and without repulsion\n\n"
            "The same seed and batch are sampled twice; Diversity Compare measures both batches the same way and "
            "shows the change in every metric on the node, with a similarity heatmap and a 2-D map of each batch.\n\n"
            "Vendi score: the effective number of distinct images (1 = all alike, batch size = all different).\n"
            "Features: 'auto' uses downscaled pixels here; connect a Load CLIP Vision model to `clip_vision` for "
            "semantic features, or an EMBEDDER + `latent_a/b` to measure in the space you repelled in."),
             size=(680, 260)),
    ]


def style_embedder_repulsion() -> list[WorkflowNode]:
    return [
        *sd15_inputs(),
        WorkflowNode("style", "ParticleRepulsionLoadStyleEmbedder", (COLUMN, 0),
                     {"style_embedder": f"{STYLE_FILE}.safetensors", "output": "class_probabilities"}),
        WorkflowNode("summary", "PreviewAny", (COLUMN, 160), links={"source": ("style", 1)}, size=(320, 200)),
        WorkflowNode("repelled", "ParticleRepulsionKSampler", (2 * COLUMN, 0), {**SAMPLING, **STYLE_REPULSION},
                     {**SAMPLER_LINKS, "embedder": ("style", 0)}, title="Repelled in style space"),
        *decoded_and_saved("repelled", 3 * COLUMN, 0, "repulsion/style"),
        note("about", (0, 900), (
            "Repel in a trained style classifier's space\n\n"
            "Load Style Embedder lists models/style_embedders/ (train one with the 'train style embedder from "
            "prompts' workflow, or the CLI scripts/train_style_embedder.py on a folder of images). With its class "
            "probabilities and the collision objective, each image is pushed out of the styles the others "
            "already hold, so the batch spreads over the styles it knows.\n\n"
            "The classifier must match the model's latents (4 channels for SD1.5/SDXL, 16 for SD3/Flux); a "
            "mismatch stops with a clear message. For the thesis's behaviour, set output = features and objective "
            "= kernel_sum (a Gram (Style) Embedder in between compares texture statistics)."), size=(680, 240)),
    ]


def train_style_embedder_from_prompts() -> list[WorkflowNode]:
    return [
        WorkflowNode("checkpoint", "CheckpointLoaderSimple", (0, 0), {"ckpt_name": SD15_CHECKPOINT}),
        WorkflowNode("latents", "ParticleRepulsionStyleLatentsFromPrompts", (COLUMN, 0), {"steps": 20, "width": 512, "height": 512},
                     {"model": ("checkpoint", 0), "clip": ("checkpoint", 1)}, size=(360, 620)),
        WorkflowNode("train", "ParticleRepulsionTrainStyleEmbedder", (2 * COLUMN + 40, 0), {"file_name": STYLE_FILE},
                     {"model": ("checkpoint", 0), "style_latents": ("latents", 0)}),
        WorkflowNode("report", "PreviewAny", (3 * COLUMN + 40, 0), links={"source": ("train", 1)}, size=(400, 300)),
        note("about", (0, 200), (
            "Train a style embedder from your own model\n\n"
            "No data set needed: the model paints every subject in every style ('{subject} by {style}'), the "
            "latents along each trajectory become training data, and a small classifier learns to tell the "
            "styles apart at every noise level. It is saved to models/style_embedders/<file_name>.safetensors "
            "and can be loaded with Load Style Embedder.\n\n"
            "More styles, subjects and images per prompt give a better classifier (and take longer). Validation "
            "accuracy per epoch is in the report."), size=(340, 330)),
    ]


CONTEXTUAL = {"step_size": 0.05, "iterations": 2, "stream": "text", "blocks": "double", "block_start": 0.33,
              "block_end": 0.67, "start": 0.0, "end": 0.1}


def contextual_repulsion(family: str, unet_name: str, text_encoders: WorkflowNode, sampling: dict,
                         extra_about: str) -> list[WorkflowNode]:
    """A DiT graph sampled twice from one seed: the plain model and the model with contextual repulsion."""
    positive_links = {"clip": ("text_encoders", 0)}
    nodes = [
        WorkflowNode("model", "UNETLoader", (0, 0), {"unet_name": unet_name, "weight_dtype": "default"}),
        text_encoders,
        WorkflowNode("positive", "CLIPTextEncode", (0, 300), {"text": PROMPT}, positive_links, title="Positive prompt"),
        WorkflowNode("negative", "CLIPTextEncode", (0, 560), {"text": "" if family == "flux" else NEGATIVE},
                     positive_links, title="Negative prompt"),
        WorkflowNode("latent", "EmptySD3LatentImage", (0, 820), {"width": 1024, "height": 1024, "batch_size": 4}),
        WorkflowNode("vae", "VAELoader", (0, 1000), {"vae_name": "ae.safetensors" if family == "flux" else "sd3_vae.safetensors"}),
        WorkflowNode("repelling_model", "ParticleRepulsionContextual", (COLUMN, 0), CONTEXTUAL, {"model": ("model", 0)}),
    ]
    guided = "positive"
    if family == "flux":
        nodes.append(WorkflowNode("guidance", "FluxGuidance", (COLUMN, 420), {"guidance": 3.5},
                                  {"conditioning": ("positive", 0)}))
        guided = "guidance"
    links = {"positive": (guided, 0), "negative": ("negative", 0), "latent_image": ("latent", 0)}
    for row, (key, model) in enumerate((("plain", "model"), ("repelled", "repelling_model"))):
        y = row * SAMPLER_ROW
        nodes += [
            WorkflowNode(key, "KSampler", (2 * COLUMN, y), sampling, {**links, "model": (model, 0)},
                         title="With contextual repulsion" if model != "model" else "Plain model (same seed)"),
            WorkflowNode(f"{key}_decode", "VAEDecode", (3 * COLUMN, y), links={"samples": (key, 0), "vae": ("vae", 0)}),
            WorkflowNode(f"{key}_save", "SaveImage", (4 * COLUMN, y), {"filename_prefix": f"repulsion/{family}_{key}"},
                         {"images": (f"{key}_decode", 0)}, size=(400, 400)),
        ]
    nodes.append(note("about", (COLUMN, 600), (
        "Contextual repulsion (Dahary et al.)\n\n"
        "During the first steps (start/end: fractions of the schedule), inside the middle third of the "
        "double-stream blocks (block_start/block_end), each image's text-token stream is pushed away from "
        "the others', so the images differ in what they depict rather than in noise.\n\n"
        "step_size: radians per step, the same scale on every model; 0 = the plain model exactly. "
        "iterations: small steps per block and model call. stream: text (paper) or image tokens.\n" + extra_about),
        size=(340, 440)))
    return nodes


def contextual_flux() -> list[WorkflowNode]:
    encoders = WorkflowNode("text_encoders", "DualCLIPLoader", (0, 120), {
        "clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"})
    sampling = {**SAMPLING, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"}
    return contextual_repulsion("flux", "flux1-dev.safetensors", encoders, sampling,
                                "Flux-dev: the paper repels during 1 of 20 steps (end 0.05-0.1).")


def contextual_sd35() -> list[WorkflowNode]:
    encoders = WorkflowNode("text_encoders", "TripleCLIPLoader", (0, 120), {
        "clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors", "clip_name3": "t5xxl_fp16.safetensors"})
    sampling = {**SAMPLING, "steps": 28, "cfg": 4.5, "sampler_name": "euler", "scheduler": "sgm_uniform"}
    return contextual_repulsion("sd35", "sd3.5_large.safetensors", encoders, sampling,
                                "SD3.5-Large: the paper repels during 4 of 28 steps (end 0.15). With real CFG, "
                                "cond and uncond are repelled separately.")


def letters_font_diversity() -> list[WorkflowNode]:
    """The letters model trained in this repository (benchmarks/letters/, installed by `make demo` or
    `benchmarks/letters/install.py`, with its font embedder trained by the pack's own Style Latents from
    Prompts + Train Style Embedder): one seed sampled plain, repelled in the font embedder's space, and
    with contextual repulsion; Diversity Compare measures the first two in the font embedder's space."""
    sys.path.insert(0, str(comfy_host.REPO / "benchmarks"))
    from letters import install as letters_files
    from letters.pipeline import CONTEXTUAL_BLOCKS, FONT_EMBEDDER_OUTPUT, FONT_EMBEDDER_STRENGTH
    from letters.pipeline import SAMPLING as LETTERS_SAMPLING

    text_links = {"clip": ("text_encoders", 0)}
    prompts = {"positive": ("positive", 0), "negative": ("negative", 0), "latent_image": ("latent", 0)}
    sampling = {**LETTERS_SAMPLING, "seed": SEED}
    contextual = {**CONTEXTUAL, **CONTEXTUAL_BLOCKS}
    nodes = [
        WorkflowNode("model", "UNETLoader", (0, 0), {"unet_name": letters_files.UNET_NAME, "weight_dtype": "default"}),
        WorkflowNode("text_encoders", "CLIPLoader", (0, 140), {"clip_name": letters_files.CLIP_NAME, "type": "sd3"}),
        WorkflowNode("positive", "CLIPTextEncode", (0, 300), {"text": "the letter R"}, text_links, title="Positive prompt"),
        WorkflowNode("negative", "CLIPTextEncode", (0, 560), {"text": ""}, text_links, title="Negative prompt"),
        WorkflowNode("latent", "EmptySD3LatentImage", (0, 820), {"width": 64, "height": 64, "batch_size": 8}),
        WorkflowNode("vae", "VAELoader", (0, 1000), {"vae_name": letters_files.VAE_NAME}),
        WorkflowNode("font_embedder", "ParticleRepulsionLoadStyleEmbedder", (COLUMN, 0),
                     {"style_embedder": letters_files.FONTS_EMBEDDER_NAME, "output": FONT_EMBEDDER_OUTPUT}),
        WorkflowNode("contextual_model", "ParticleRepulsionContextual", (COLUMN, 2 * SAMPLER_ROW + 300), contextual,
                     {"model": ("model", 0)}),
    ]
    rows = (("plain", "KSampler", {"model": ("model", 0)}, {}, "Plain batch"),
            ("fonts_repelled", "ParticleRepulsionKSampler", {"model": ("model", 0), "embedder": ("font_embedder", 0)},
             {**REPULSION, "strength": FONT_EMBEDDER_STRENGTH}, "Repelled in the font embedder (same seed)"),
            ("contextual", "KSampler", {"model": ("contextual_model", 0)}, {}, "Contextual repulsion (same seed)"))
    for row, (key, node_type, links, settings, title) in enumerate(rows):
        y = row * SAMPLER_ROW
        nodes += [
            WorkflowNode(key, node_type, (2 * COLUMN + 40, y), {**sampling, **settings}, {**prompts, **links}, title=title),
            WorkflowNode(f"{key}_decode", "VAEDecode", (3 * COLUMN + 40, y), links={"samples": (key, 0), "vae": ("vae", 0)}),
            WorkflowNode(f"{key}_preview", "PreviewImage", (4 * COLUMN + 40, y), links={"images": (f"{key}_decode", 0)},
                         title=title, size=(400, 300)),
        ]
    nodes.append(WorkflowNode(
        "compare", "ParticleRepulsionDiversityCompare", (5 * COLUMN + 120, 0),
        {"features": "auto", "aspect": "whole", "prompt_groups": 1, "label_a": "plain",
         "label_b": "font embedder", "plot_width": 512, "plot_height": 768},
        {"latent_a": ("plain", 0), "latent_b": ("fonts_repelled", 0), "embedder": ("font_embedder", 0)},
        title="Diversity in the font embedder's space", size=(520, 1100)))
    nodes.append(note("about", (0, 1160), (
        "Letters in many fonts: a model trained in this repository\n\n"
        "A small SD3-architecture model draws capital letters ('the letter R') in 24 fonts; a plain batch "
        "mostly repeats the common fonts. Its font embedder was learnt from the model's own drawings ('the letter "
        "R by <font>') with Style Latents from Prompts and Train Style Embedder (the 'train style embedder from "
        "prompts' workflow shows how). Repelling in its features (log_vendi, strength 4) spreads the batch over "
        "more fonts with the same letter (with a classifier as weak as this one, 37% on 24 fonts, its features "
        "work better than its class probabilities); contextual repulsion pushes the text tokens apart inside the "
        "transformer instead. Diversity Compare measures the plain and the font-repelled batch in the font "
        "embedder's space.\n\n"
        "Install the model files with `make demo` or `python benchmarks/letters/install.py` (ComfyUI's Python)."),
        size=(340, 420)))
    return nodes


def catalogue(object_info: dict) -> dict[str, list[WorkflowNode]]:
    embedders = object_info["ParticleRepulsionEmbedder"]["input"]["required"]["embedder"][0]
    return {
        "repulsive_batch_vs_plain": repulsive_batch(),
        "embedder_gallery": embedder_gallery(embedders),
        "repulsive_sampler_custom_advanced": sampler_custom_advanced(),
        "diversity_report": diversity_report(),
        "style_embedder_repulsion": style_embedder_repulsion(),
        "train_style_embedder_from_prompts": train_style_embedder_from_prompts(),
        "contextual_repulsion_flux": contextual_flux(),
        "contextual_repulsion_sd35": contextual_sd35(),
        "letters_font_diversity": letters_font_diversity(),
    }


def main() -> int:
    WORKFLOWS_DIR.mkdir(exist_ok=True)
    with ComfyServer(comfy_host.HOST_DIR / "build-workflows-server.log") as server:
        object_info = server.object_info()
    for name, nodes in catalogue(object_info).items():
        path = WORKFLOWS_DIR / f"{name}.json"
        path.write_text(json.dumps(to_ui_format(nodes, object_info), indent=2) + "\n")
        print(f"[workflows] wrote {path.relative_to(comfy_host.REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
