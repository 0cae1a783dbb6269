"""The pack's main job, end to end in a real ComfyUI server on the tiny checkpoint.

One batch is sampled twice from the same seed, without and with repulsion; the demo writes a side-by-side
grid of the decoded images and the diversity of each batch (mean pairwise distance, Vendi score) to
`output/demo/`. Run it with `make demo`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_host  # noqa: E402

comfy_host.register_pack_namespace()
from comfy_server import ComfyServer  # noqa: E402
from graphs import Graph  # noqa: E402
from particle_repulsion.metrics import mean_pairwise_distance, vendi_score  # noqa: E402

OUTPUT = comfy_host.REPO / "output" / "demo"
BATCH, SIZE, STEPS, SEED = 6, 128, 12, 2026
RUNS = {"plain": 0.0, "repelled": 0.5}


def demo_graph(checkpoint: str) -> Graph:
    """Two Repulsive KSamplers on one batch and seed, strength 0 (stock) and 0.5, each saved and decoded."""
    graph = Graph(checkpoint, batch_size=BATCH, width=SIZE, height=SIZE, prefix="demo",
                  prompt="a lighthouse on a cliff at dusk, oil painting")
    for run, strength in RUNS.items():
        graph.repulsive_ksampler(run, "euler_ancestral", "karras", seed=SEED, steps=STEPS, strength=strength)
        graph.save_latent(run)
        graph.save_image(run)
    return graph


def batch_numbers(latents: torch.Tensor, images: list[np.ndarray]) -> dict:
    pixels = torch.from_numpy(np.stack(images)).float().flatten(1) / 255.0
    return {"latent_mean_pairwise_l2": mean_pairwise_distance(latents.flatten(1)),
            "pixel_mean_pairwise_l2": mean_pairwise_distance(pixels),
            "pixel_vendi": vendi_score(pixels)}


def side_by_side(rows: dict[str, list[np.ndarray]]) -> Image.Image:
    """One labelled row of images per run."""
    label_width, gap = 90, 4
    height, width = rows[next(iter(rows))][0].shape[:2]
    columns = max(len(images) for images in rows.values())
    grid = Image.new("RGB", (label_width + columns * (width + gap), len(rows) * (height + gap)), "white")
    draw = ImageDraw.Draw(grid)
    for row, (label, images) in enumerate(rows.items()):
        top = row * (height + gap)
        draw.text((6, top + height // 2), label, fill="black")
        for column, image in enumerate(images):
            grid.paste(Image.fromarray(image), (label_width + column * (width + gap), top))
    return grid


def main() -> int:
    import tiny_models

    comfy_host.use_comfyui_in_process()
    checkpoint = tiny_models.ensure(tiny_models.TINY_SD15).name
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with ComfyServer(OUTPUT / "comfyui-server.log") as server:
        print(f"[demo] ComfyUI at {server.url}; sampling batch {BATCH} at {SIZE}px, {STEPS} steps, twice")
        result = server.run(demo_graph(checkpoint).nodes)
    images = {run: result.images(f"image_{run}") for run in RUNS}
    numbers = {run: {"strength": strength, **batch_numbers(result.latents(f"latent_{run}"), images[run])}
               for run, strength in RUNS.items()}
    side_by_side(images).save(OUTPUT / "plain_vs_repelled.png")
    (OUTPUT / "numbers.json").write_text(json.dumps(numbers, indent=2))
    print(f"{'batch':<10}{'strength':>9}{'latent L2':>12}{'pixel L2':>11}{'pixel Vendi':>13}")
    for run, row in numbers.items():
        print(f"{run:<10}{row['strength']:>9.2f}{row['latent_mean_pairwise_l2']:>12.2f}"
              f"{row['pixel_mean_pairwise_l2']:>11.2f}{row['pixel_vendi']:>13.3f}")
    print(f"[demo] wrote {OUTPUT / 'plain_vs_repelled.png'} and {OUTPUT / 'numbers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
