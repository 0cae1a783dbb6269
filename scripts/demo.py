"""The pack's main job, end to end in a real ComfyUI server, on the letters model trained in this repository.

The letters model (benchmarks/letters/: an SD3-architecture MMDiT, a TAESD-format VAE and CLIP-L) is
installed into the host's model folders; then, for "the letter R" and "the letter g" (CLIP lower-cases
prompts; the model draws capitals), one batch of 8 is sampled from the same seed four times: plain (stock
KSampler), with the Repulsive KSampler at its node defaults, with the Repulsive KSampler in the space of the
font embedder that the pack's Train Style Embedder learnt from this model (its features, strength 4), and
with Contextual Repulsion at its defaults (but the block range); these settings are in `letters.pipeline`.
The judges (a font and a letter classifier trained on clean renders) label every glyph.
Writes `output/demo/letters.png` (one labelled row per prompt and run) and `output/demo/numbers.json`
(distinct fonts, Vendi of the font judge's features, letter accuracy per row). Run it with `make demo`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import comfy_host  # noqa: E402
from graphs import widget_defaults  # noqa: E402
from letters.pipeline import CONTEXTUAL_BLOCKS, FONT_EMBEDDER_OUTPUT, FONT_EMBEDDER_STRENGTH  # noqa: E402

OUTPUT = comfy_host.REPO / "output" / "demo"
BATCH, SIZE, SEED = 8, 64, 2026
PROMPTS = {"R": "the letter R", "G": "the letter g"}
RUNS = ("plain", "repulsion (node defaults)", "repulsion in the font embedder", "contextual repulsion")
TILE, LABEL_WIDTH, CAPTION_HEIGHT = 96, 250, 14


def demo_graph(object_info: dict, names: dict, sampling: dict) -> dict:
    """API prompt: the letters model's loaders, then per prompt and run a sampler, VAEDecode and SaveImage."""
    graph = {
        "model": {"class_type": "UNETLoader", "inputs": {"unet_name": names["unet"], "weight_dtype": "default"}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": names["clip"], "type": "sd3"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": names["vae"]}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": ""}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": BATCH}},
        "fonts": {"class_type": "ParticleRepulsionLoadStyleEmbedder", "inputs": {
            **widget_defaults(object_info["ParticleRepulsionLoadStyleEmbedder"]["input"]),
            "style_embedder": names["fonts"], "output": FONT_EMBEDDER_OUTPUT}},
        "contextual_model": {"class_type": "ParticleRepulsionContextual", "inputs": {
            "model": ["model", 0], **widget_defaults(object_info["ParticleRepulsionContextual"]["input"]),
            **CONTEXTUAL_BLOCKS}},
    }
    stock_inputs = set(object_info["KSampler"]["input"]["required"])
    sampler_widgets = widget_defaults(object_info["ParticleRepulsionKSampler"]["input"])
    repulsion = {name: default for name, default in sampler_widgets.items() if name not in stock_inputs}
    for key, text in PROMPTS.items():
        graph[f"positive_{key}"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": text}}
        common = {**sampling, "seed": SEED, "positive": [f"positive_{key}", 0], "negative": ["negative", 0],
                  "latent_image": ["latent", 0]}
        samplers = {
            "plain": ("KSampler", {**common, "model": ["model", 0]}),
            "repulsion (node defaults)": ("ParticleRepulsionKSampler", {**common, **repulsion, "model": ["model", 0]}),
            "repulsion in the font embedder": ("ParticleRepulsionKSampler", {
                **common, **repulsion, "strength": FONT_EMBEDDER_STRENGTH, "model": ["model", 0],
                "embedder": ["fonts", 0]}),
            "contextual repulsion": ("KSampler", {**common, "model": ["contextual_model", 0]}),
        }
        for index, run in enumerate(RUNS):
            node_type, inputs = samplers[run]
            node = f"{key}_{index}"
            graph[node] = {"class_type": node_type, "inputs": inputs}
            graph[f"{node}_decode"] = {"class_type": "VAEDecode", "inputs": {"samples": [node, 0], "vae": ["vae", 0]}}
            graph[f"{node}_save"] = {"class_type": "SaveImage", "inputs": {
                "images": [f"{node}_decode", 0], "filename_prefix": f"demo/letters_{node}"}}
    return graph


def labelled_grid(rows: list[tuple[str, list[np.ndarray], list[str], str]]) -> Image.Image:
    """One row per (title, images [H, W, 3] uint8, tile captions, row numbers); tiles upscaled to TILE px."""
    columns = max(len(images) for _, images, _, _ in rows)
    height = TILE + CAPTION_HEIGHT + 6
    grid = Image.new("RGB", (LABEL_WIDTH + columns * (TILE + 4), len(rows) * height), "white")
    draw = ImageDraw.Draw(grid)
    for row, (title, images, captions, numbers) in enumerate(rows):
        top = row * height
        draw.text((6, top + TILE // 2 - 14), title, fill="black")
        draw.text((6, top + TILE // 2 + 2), numbers, fill=(90, 90, 90))
        for column, (image, text) in enumerate(zip(images, captions)):
            left = LABEL_WIDTH + column * (TILE + 4)
            grid.paste(Image.fromarray(image).resize((TILE, TILE), Image.Resampling.LANCZOS), (left, top))
            draw.text((left + 2, top + TILE + 1), text, fill=(180, 0, 0))
    return grid


def main() -> int:
    comfy_host.use_comfyui_in_process()
    from comfy_server import ComfyServer
    from letters import install as letters_install
    from letters.glyphs import LETTERS
    from letters.models import load_styles
    from letters.pipeline import SAMPLING, load_judges

    started = time.perf_counter()
    letters_install.install()
    names = {"unet": letters_install.UNET_NAME, "clip": letters_install.CLIP_NAME, "vae": letters_install.VAE_NAME,
             "fonts": letters_install.FONTS_EMBEDDER_NAME}
    sampling = {key: SAMPLING[key] for key in ("steps", "cfg", "sampler_name", "scheduler", "denoise")}
    styles, judges = load_styles()["styles"], load_judges()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with ComfyServer(OUTPUT / "comfyui-server.log") as server:
        print(f"[demo] ComfyUI at {server.url}; 2 prompts x {len(RUNS)} runs, batch {BATCH}, {SAMPLING['steps']} steps")
        result = server.run(demo_graph(server.object_info(), names, sampling))
    rows, numbers = [], {}
    for key, text in PROMPTS.items():
        for index, run in enumerate(RUNS):
            images = result.images(f"{key}_{index}_save")
            verdict = judges.verdict(torch.from_numpy(np.stack(images)).float() / 255.0)
            figures = numbers[f"{text} | {run}"] = verdict.figures(key)
            summary = (f"{figures['distinct_fonts']} fonts, Vendi {figures['vendi']:.2f}, "
                       f"{100 * figures['letter_accuracy']:.0f}% {key}")
            captions = [f"{LETTERS[letter]} {styles[style][:12]}"
                        for letter, style in zip(verdict.letters.tolist(), verdict.styles.tolist())]
            rows.append((f'"{text}": {run}', images, captions, summary))
    labelled_grid(rows).save(OUTPUT / "letters.png")
    (OUTPUT / "numbers.json").write_text(json.dumps(numbers, indent=2))
    print(f"{'prompt | run':<62}{'fonts':>6}{'Vendi':>7}{'letter':>8}")
    for label, row in numbers.items():
        print(f"{label:<62}{row['distinct_fonts']:>6}{row['vendi']:>7.2f}{100 * row['letter_accuracy']:>7.0f}%")
    print(f"[demo] wrote {OUTPUT / 'letters.png'} and {OUTPUT / 'numbers.json'} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
