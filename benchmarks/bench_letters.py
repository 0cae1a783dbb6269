"""Benchmark: how many fonts a batch of "the letter X" shows, on the letters model trained here.

The model (SD3-architecture MMDiT, TAESD-format VAE, CLIP-L; `benchmarks/letters/`) runs in-process
through ComfyUI's own node classes: UNETLoader, CLIPLoader (sd3), VAELoader, CLIPTextEncode, KSampler,
VAEDecode, and the pack's nodes. For every one of the 26 prompts "the letter A" .. "the letter Z",
batches of N = 8 from the same seeds for every method:

- i.i.d.: the stock KSampler;
- node defaults: the Repulsive KSampler with every repulsion input at its default (read from the node);
- style embedder: the Repulsive KSampler at its defaults with the EMBEDDER that the pack's Train Style
  Embedder trained on this model's own outputs (Style Latents from Prompts, "the letter X by <font>";
  `letters/font_embedder.py`, run by `letters/train.py`), loaded with the pack's Load Style Embedder;
- a built-in embedder: the Repulsive KSampler at strength 2 with the Repulsion Embedder node's random CNN
  (no training; what an artist can pick for texture-like differences such as fonts);
- contextual: Contextual Repulsion at its defaults, at the paper's settings (all double blocks, 50 inner
  steps, first step only) and at the setting calibrated here (a sweep on other seeds);
- CADS: Gaussian noise on the text conditioning during the first steps (Sadat et al. 2024, as the
  most-installed ComfyUI diversity nodes do), benchmark-side, at its usual settings.

Scores (judges trained on clean renders, never used for steering): distinct fonts per batch (font
judge), Vendi of the font judge's features (cosine), letter accuracy (letter judge), and time per step
relative to i.i.d. (methods interleaved prompt by prompt).

    .host/venv/bin/python benchmarks/bench_letters.py [--seeds 1] [--threads 1]

Writes benchmarks/results/letters.json, letters.md and letters_samples.png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import textwrap
import time
from dataclasses import dataclass
from typing import Callable

import letters  # noqa: F401  (ComfyUI in-process; the pack as particle_repulsion)
import comfy.utils
import nodes
import torch
from PIL import Image, ImageDraw

from letters import pipeline
from letters.glyphs import LETTERS, caption
from letters.install import FONTS_EMBEDDER_NAME, install
from letters.pipeline import SAMPLING
from particle_repulsion.nodes.contextual import ContextualRepulsion
from particle_repulsion.nodes.embedder_nodes import LoadStyleEmbedder, RepulsionEmbedder
from particle_repulsion.nodes.model_folders import register_model_folders
from particle_repulsion.nodes.sampler_nodes import RepulsiveKSampler, repulsion_defaults

from common import RESULTS, markdown_table
from graphs import widget_defaults

BATCH = 8
# CADS (Sadat et al., ICLR 2024): condition = sqrt(g) y + s sqrt(1 - g) n, g = 0 above sigma tau2, 1 below
# tau1, linear between (sigma is SD3's t: 1 = pure noise), then rescaled to y's mean and std (psi = 1).
CADS = {"noise_scale": 0.25, "tau1": 0.6, "tau2": 0.9, "psi": 1.0}
SEED_BASE = 1000
CALIBRATION_SEED_BASE = 5000
CALIBRATION_LETTERS = tuple("AGKW")
SHEET_LETTERS = ("R", "G")
LABEL_CHARACTERS = 36  # per line of a method's name on the sample sheet (3 lines fit beside a tile)


def contextual_defaults() -> dict:
    return widget_defaults(ContextualRepulsion.INPUT_TYPES())


def paper_contextual() -> dict:
    """Dahary et al.'s setting: every double block, 50 inner steps, the first step only."""
    return {**contextual_defaults(), "block_start": 0.0, "block_end": 1.0, "iterations": 50,
            "end": 1.0 / SAMPLING["steps"]}


@dataclass(frozen=True)
class Method:
    """A way to sample one batch: `run(model, positive, negative, latent, seed)` -> LATENT."""

    name: str
    run: Callable


def stock(model_for: Callable) -> Callable:
    """The stock KSampler on `model_for(model)` (a patched clone, or the model itself)."""
    def run(model, positive, negative, latent, seed):
        return nodes.KSampler().sample(model_for(model), seed, positive=positive, negative=negative,
                                       latent_image=latent, **SAMPLING)[0]
    return run


def repulsive(embedder=None, **overrides) -> Callable:
    def run(model, positive, negative, latent, seed):
        options = {**repulsion_defaults(), **overrides}
        return RepulsiveKSampler().sample(model, seed, positive=positive, negative=negative, latent_image=latent,
                                          embedder=embedder, **SAMPLING, **options)[0]
    return run


def contextual(settings: dict) -> Callable:
    return stock(lambda model: ContextualRepulsion().patch(model, **settings)[0])


def cads_model(model, seed: int, noise_scale: float, tau1: float, tau2: float, psi: float):
    """A clone of `model` whose cond (not uncond) text conditioning is noised as CADS does, on the columns
    the text encoder fills (SD3 pads CLIP-L's 768 columns with zeros)."""
    generator = torch.Generator().manual_seed(seed)

    def anneal(sigma: float) -> float:
        return min(1.0, max(0.0, (tau2 - sigma) / (tau2 - tau1)))

    def noised(values: torch.Tensor, gamma: float) -> torch.Tensor:
        filled = values.abs().flatten(0, -2).amax(dim=0) > 0
        part = values[..., filled]
        noise = torch.randn(part.shape, generator=generator).to(part)
        mixed = gamma ** 0.5 * part + noise_scale * (1 - gamma) ** 0.5 * noise
        axes = tuple(range(1, part.dim()))
        rescaled = (mixed - mixed.mean(axes, keepdim=True)) / mixed.std(axes, keepdim=True) \
            * part.std(axes, keepdim=True) + part.mean(axes, keepdim=True)
        out = values.clone()
        out[..., filled] = psi * rescaled + (1 - psi) * mixed
        return out

    def wrapper(apply_model, arguments):
        gamma = anneal(float(arguments["timestep"].max()))
        conditioning = dict(arguments["c"])
        if gamma < 1.0:
            chunks = len(arguments["cond_or_uncond"])
            for key in ("c_crossattn", "y"):
                parts = list(conditioning[key].chunk(chunks))
                parts = [noised(part, gamma) if kind == 0 else part
                         for part, kind in zip(parts, arguments["cond_or_uncond"])]
                conditioning[key] = torch.cat(parts)
        return apply_model(arguments["input"], arguments["timestep"], **conditioning)

    patched = model.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    return patched


def cads(settings: dict) -> Callable:
    def run(model, positive, negative, latent, seed):
        return stock(lambda base: cads_model(base, seed, **settings))(model, positive, negative, latent, seed)
    return run


def random_cnn_embedder():
    """The Repulsion Embedder node's random CNN at the node's defaults for its seed and grid."""
    defaults = widget_defaults(RepulsionEmbedder.INPUT_TYPES())
    return RepulsionEmbedder().choose(**{**defaults, "embedder": "random_cnn"})[0]


def load_font_embedder(output: str = "class_probabilities"):
    """The font embedder the pack's Train Style Embedder learnt from this model (train.py), through the pack's
    Load Style Embedder node with its `output`; the EMBEDDER and its summary."""
    register_model_folders()
    install(folders=("style_embedders",))
    return LoadStyleEmbedder().load(FONTS_EMBEDDER_NAME, output)


def sample_and_judge(model: pipeline.Letters, method: Method, letter: str, seed: int) -> tuple[dict, float, torch.Tensor]:
    """One batch of "the letter <letter>": the judges' figures, the sampling seconds, the images."""
    positive, negative = model.encode(caption(letter)), model.encode("")
    started = time.perf_counter()
    latent = method.run(model.model, positive, negative, model.empty_latent(BATCH), seed)
    seconds = time.perf_counter() - started
    images = model.images(latent)
    return model.judge(images).figures(letter), seconds, images


def refusal(model: pipeline.Letters, method: Method) -> str | None:
    """The ValueError message if `method` refuses this model (e.g. a block range with no block), else None."""
    try:
        method.run(model.model, model.encode("the letter A"), model.encode(""), model.empty_latent(2), 0)
    except ValueError as error:
        return str(error)
    return None


def measure(model: pipeline.Letters, methods: list[Method], letters_: tuple[str, ...], seeds: range) -> list[dict]:
    """Mean figures per method over every (letter, seed); methods interleaved batch by batch. A method that
    refuses the model gets a row with its message instead of figures."""
    refused = {method.name: message for method in methods if (message := refusal(model, method)) is not None}
    methods = [method for method in methods if method.name not in refused]
    figures = {method.name: [] for method in methods}
    seconds = {method.name: 0.0 for method in methods}
    for letter in letters_:
        for seed in seeds:
            for method in methods:
                batch_figures, elapsed, _ = sample_and_judge(model, method, letter, seed)
                figures[method.name].append(batch_figures)
                seconds[method.name] += elapsed
    steps = SAMPLING["steps"] * len(letters_) * len(seeds)
    rows = []
    for method in methods:
        rows.append({"method": method.name, **{key: statistics.fmean(row[key] for row in figures[method.name])
                                                for key in ("distinct_fonts", "vendi", "letter_accuracy")},
                     "ms_per_step": 1e3 * seconds[method.name] / steps})
        print(f"{method.name:<40} fonts {rows[-1]['distinct_fonts']:.2f}  vendi {rows[-1]['vendi']:.2f}  "
              f"letters {rows[-1]['letter_accuracy']:.3f}  {rows[-1]['ms_per_step']:.1f} ms/step", flush=True)
    for name, message in refused.items():
        print(f"{name:<40} refused: {message}", flush=True)
    return rows + [{"method": name, "refused": message} for name, message in refused.items()]


def calibration_grid() -> list[tuple[str, dict]]:
    """Contextual settings swept on CALIBRATION_LETTERS (other seeds than the benchmark)."""
    base = contextual_defaults()
    grid = []
    for blocks in ((0.0, 1.0), (0.0, 0.5)):
        for iterations in (2, 10):
            for step_size in (0.5, 2.0, 8.0):
                for end in (0.1, 0.3):
                    grid.append((f"blocks {blocks[0]:g}-{blocks[1]:g}, it {iterations}, step {step_size:g}, "
                                 f"end {end:g}", {**base, "block_start": blocks[0], "block_end": blocks[1],
                                                  "iterations": iterations, "step_size": step_size, "end": end}))
    return grid


def calibrate_contextual(model: pipeline.Letters, seeds: int) -> tuple[dict, list[dict]]:
    """The grid setting with the most distinct fonts whose letter accuracy is within 3 points of i.i.d."""
    grid = calibration_grid()
    methods = [Method("i.i.d.", stock(lambda model_: model_))] + [Method(name, contextual(s)) for name, s in grid]
    rows = measure(model, methods, CALIBRATION_LETTERS, range(CALIBRATION_SEED_BASE, CALIBRATION_SEED_BASE + seeds))
    floor = rows[0]["letter_accuracy"] - 0.03
    best = max((row for row in rows[1:] if row["letter_accuracy"] >= floor), key=lambda row: row["distinct_fonts"],
               default=rows[1])
    return dict(grid)[best["method"]], rows


def sample_sheet(model: pipeline.Letters, methods: list[Method]) -> Image.Image:
    """One batch per method and sheet letter (seed SEED_BASE), each tile labelled with the judges' verdict."""
    tile, label_width = 72, 230
    rows = [(method, letter) for letter in SHEET_LETTERS for method in methods]
    sheet = Image.new("RGB", (label_width + BATCH * tile, len(rows) * tile), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (method, letter) in enumerate(rows):
        _, _, images = sample_and_judge(model, method, letter, SEED_BASE)
        verdict = model.judge(images)
        draw.text((4, row * tile + 4), f'"{caption(letter)}"', fill="black")
        for line_index, line in enumerate(textwrap.wrap(method.name, LABEL_CHARACTERS)):
            draw.text((4, row * tile + 18 + 13 * line_index), line, fill="black")
        for column, image in enumerate(images):
            pixels = (image.clamp(0, 1) * 255).byte().numpy()
            sheet.paste(Image.fromarray(pixels), (label_width + column * tile, row * tile))
            label = f"{LETTERS[verdict.letters[column]]} {model.styles[verdict.styles[column]][:9]}"
            draw.text((label_width + column * tile, row * tile + 62), label, fill=(200, 0, 0))
    return sheet


def results_table(rows: list[dict]) -> str:
    """The markdown table of `rows` (the first is i.i.d.), adding each row's ratios to i.i.d. in place."""
    iid = rows[0]
    lines = []
    for row in rows:
        if "refused" in row:
            lines.append([row["method"], "refused: " + row["refused"][:120], "", "", "", ""])
            continue
        row["fonts_vs_iid"] = row["distinct_fonts"] / iid["distinct_fonts"]
        row["step_time_vs_iid"] = row["ms_per_step"] / iid["ms_per_step"]
        lines.append([row["method"], f"{row['distinct_fonts']:.2f}", f"{row['fonts_vs_iid']:.2f}", f"{row['vendi']:.2f}",
                      f"{100 * row['letter_accuracy']:.1f} %", f"{row['step_time_vs_iid']:.2f}"])
    return markdown_table(["method", "distinct fonts of 8", "x i.i.d.", "Vendi (font judge)", "letter accuracy",
                           "time per step x i.i.d."], lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=1, help="batches per prompt and method (default %(default)s)")
    parser.add_argument("--calibration-seeds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    comfy.utils.PROGRESS_BAR_ENABLED = False
    started = time.process_time()
    with torch.inference_mode():
        model = pipeline.load()
        embedder, report = load_font_embedder()
        feature_embedder, _ = load_font_embedder("features")
        print(report, flush=True)
        calibrated, calibration_rows = calibrate_contextual(model, arguments.calibration_seeds)
        methods = [
            Method("i.i.d. (KSampler)", stock(lambda model_: model_)),
            Method("Repulsive KSampler, node defaults", repulsive()),
            Method("Repulsive KSampler + style embedder", repulsive(embedder)),
            Method("Repulsive KSampler + style embedder, collision objective", repulsive(embedder, objective="collision")),
            Method("Repulsive KSampler + style embedder, collision, strength 2", repulsive(embedder, objective="collision",
                                                                                         strength=2.0)),
            Method("Repulsive KSampler + style embedder, collision, strength 3", repulsive(embedder, objective="collision",
                                                                                         strength=3.0)),
            Method("Repulsive KSampler + style embedder features, log_vendi, strength 2",
                   repulsive(feature_embedder, strength=2.0)),
            Method("Repulsive KSampler + style embedder features, log_vendi, strength 4",
                   repulsive(feature_embedder, strength=4.0)),
            Method("Repulsive KSampler + style embedder features, log_vendi, strength 4, start 0.15",
                   repulsive(feature_embedder, strength=4.0, start=0.15)),
            Method("Repulsive KSampler + style embedder features, log_vendi, strength 6",
                   repulsive(feature_embedder, strength=6.0)),
            Method("Repulsive KSampler + random_cnn embedder, strength 2",
                   repulsive(random_cnn_embedder(), strength=2.0)),
            Method("Contextual Repulsion, node defaults", contextual(contextual_defaults())),
            Method("Contextual Repulsion, paper's settings", contextual(paper_contextual())),
            Method("Contextual Repulsion, calibrated", contextual(calibrated)),
            Method("CADS conditioning noise (baseline)", cads(CADS)),
        ]
        rows = measure(model, methods, LETTERS, range(SEED_BASE, SEED_BASE + arguments.seeds))
        refused = {row["method"] for row in rows if "refused" in row}
        sheet = sample_sheet(model, [method for method in methods if method.name not in refused])
    cpu_seconds = time.process_time() - started
    table = results_table(rows)
    calibration_table = markdown_table(
        ["contextual setting", "distinct fonts", "Vendi", "letter accuracy"],
        [[row["method"], f"{row['distinct_fonts']:.2f}", f"{row['vendi']:.2f}", f"{100 * row['letter_accuracy']:.1f} %"]
         for row in calibration_rows])
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"torch": torch.__version__, "sampling": SAMPLING, "batch": BATCH, "seeds": arguments.seeds,
               "repulsion_defaults": repulsion_defaults(), "contextual_defaults": contextual_defaults(),
               "contextual_paper": paper_contextual(), "contextual_calibrated": calibrated, "cads": CADS,
               "style_embedder_report": report, "rows": rows, "calibration": calibration_rows,
               "cpu_seconds": cpu_seconds}
    (RESULTS / "letters.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / "letters.md").write_text(f"## Letters, N = {BATCH}, 26 prompts x {arguments.seeds} seeds\n\n{table}\n\n"
                                        f"## Contextual calibration ({', '.join(CALIBRATION_LETTERS)})\n\n"
                                        f"{calibration_table}\n")
    sheet.save(RESULTS / "letters_samples.png")
    print(f"wrote benchmarks/results/letters.json, letters.md and letters_samples.png ({cpu_seconds:.0f} CPU-s)")


if __name__ == "__main__":
    main()
