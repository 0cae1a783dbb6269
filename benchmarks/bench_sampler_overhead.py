"""Benchmark: per-step overhead of the Repulsive KSampler over the stock KSampler, on the tiny checkpoint.

Both run in-process through ComfyUI's own sampling stack (the same code paths as the nodes): the stock
KSampler via `nodes.common_ksampler`, ours via `RepulsiveKSampler.sample`. For each batch size and each
built-in embedder, the two are timed alternately (stock, ours, stock, ours, ...) so that machine drift
hits both alike; the overhead is median(ours) / median(stock) - 1. The tiny UNet is far cheaper than a
real SD1.5 UNet, so these ratios overstate the overhead a user sees.

    .host/venv/bin/python benchmarks/bench_sampler_overhead.py [--size 128] [--steps 4] [--repeats 3]

Prints a table and writes benchmarks/results/sampler_overhead.json. Target: at most 5% at batch 8.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "sampler_overhead.json"
sys.path.insert(0, str(REPO / "scripts"))

import comfy_host  # noqa: E402

comfy_host.use_comfyui_in_process()
comfy_host.register_pack_namespace()

import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
import nodes  # noqa: E402
import tiny_models  # noqa: E402
from particle_repulsion.embedders import EMBEDDER_NAMES  # noqa: E402
from particle_repulsion.nodes.embedder_recipes import BuiltinEmbedderRecipe  # noqa: E402
from particle_repulsion.nodes.sampler_nodes import RepulsiveKSampler, repulsion_defaults  # noqa: E402

BATCH_SIZES = (4, 8, 16)
TARGET_AT_8 = 0.05
SAMPLER, SCHEDULER, CFG, SEED = "euler", "normal", 5.0, 0


def load_tiny_model():
    path = tiny_models.ensure(tiny_models.TINY_SD15)
    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=True)
    encode = nodes.CLIPTextEncode().encode
    return model, encode(clip, "a lighthouse at dusk")[0], encode(clip, "blurry")[0]


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(model, positive, negative, latent, steps, repeats, embedder_name) -> tuple[float, float]:
    """Median seconds of the stock KSampler and of ours, timed alternately."""
    recipe = BuiltinEmbedderRecipe(name=embedder_name)

    def stock():
        nodes.common_ksampler(model, SEED, steps, CFG, SAMPLER, SCHEDULER, positive, negative, latent)

    def ours():
        RepulsiveKSampler().sample(model, SEED, steps, CFG, SAMPLER, SCHEDULER, positive, negative, latent, 1.0,
                                   embedder=recipe, **repulsion_defaults())

    stock(), ours()  # warm-up: model load, first-call allocations
    stock_times, our_times = [], []
    for _ in range(repeats):
        stock_times.append(timed(stock))
        our_times.append(timed(ours))
    return statistics.median(stock_times), statistics.median(our_times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (latent side = size / 8)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    comfy.utils.PROGRESS_BAR_ENABLED = False
    model, positive, negative = load_tiny_model()
    rows = []
    print(f"{'batch':>5} {'embedder':<16}{'stock s/step':>13}{'ours s/step':>12}{'overhead':>10}")
    with torch.inference_mode():
        for batch_size in BATCH_SIZES:
            latent = nodes.EmptyLatentImage().generate(arguments.size, arguments.size, batch_size)[0]
            for embedder_name in EMBEDDER_NAMES:
                stock_seconds, our_seconds = measure(model, positive, negative, latent, arguments.steps,
                                                     arguments.repeats, embedder_name)
                row = {"batch": batch_size, "embedder": embedder_name,
                       "stock_seconds_per_step": stock_seconds / arguments.steps,
                       "ours_seconds_per_step": our_seconds / arguments.steps,
                       "overhead": our_seconds / stock_seconds - 1.0}
                rows.append(row)
                print(f"{batch_size:>5} {embedder_name:<16}{row['stock_seconds_per_step']:>13.4f}"
                      f"{row['ours_seconds_per_step']:>12.4f}{row['overhead']:>+10.1%}", flush=True)
    at_8 = [row["overhead"] for row in rows if row["batch"] == 8]
    verdict = "met" if max(at_8) <= TARGET_AT_8 else "missed"
    print(f"target: overhead <= {TARGET_AT_8:.0%} at batch 8 for every embedder: {verdict} (worst {max(at_8):+.1%})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"image_size": arguments.size, "steps": arguments.steps, "sampler": SAMPLER,
                                   "cfg": CFG, "threads": torch.get_num_threads(), "rows": rows,
                                   "target_at_batch_8": TARGET_AT_8, "verdict": verdict}, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
