"""Shared parts of the diversity benchmarks (GMM and digits), run in the host virtualenv.

- `denoiser_model(denoiser)` (from scripts/exact_models.py): a real ComfyUI MODEL whose prediction is a
  known denoiser D(x, sigma), so sampling goes through ComfyUI's own stack.
- `sample_batch(...)`: one batch from that model with a built-in sampler, wrapped or not in the pack's
  Repulsive Sampler (`nodes.repulsion.repulsive_sampler`).
- `node_defaults()` / `node_repulsion()`: the repulsion exactly as the nodes ship it.
- Benchmark-side parts: Particle Guidance's kernel (a baseline), `ClassProbabilities` and `ModuleRecipe`
  to hand a benchmark's own classifier to the pack's `Repulsion`.
- `Method`, averaging of per-batch figures, markdown tables and the Pareto figure (Pillow).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "scripts"))

import comfy_host  # noqa: E402

comfy_host.use_comfyui_in_process()
comfy_host.register_pack_namespace()

import comfy.samplers  # noqa: E402
from exact_models import Denoiser, denoiser_model, sample_latents  # noqa: E402

from particle_repulsion.kernels import Objective, make_objective, squared_distances  # noqa: E402
from particle_repulsion.kernels.guidance import RepulsionSettings  # noqa: E402
from particle_repulsion.nodes.repulsion import Repulsion, repulsive_sampler  # noqa: E402
from particle_repulsion.nodes.embedder_recipes import StyleEmbedderRecipe  # noqa: E402
from particle_repulsion.nodes.sampler_nodes import build_repulsion, repulsion_defaults  # noqa: E402
from particle_repulsion.nodes.style_training import StyleLatents, TrainingOptions, train_for_model  # noqa: E402

STYLE_EPOCHS = 40
STYLE_BATCH = 64
SCHEDULER = "karras"
STEPS = 20


def schedule(model, steps: int = STEPS) -> Tensor:
    """The model's sigmas [steps + 1] for ComfyUI's Karras scheduler."""
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), SCHEDULER, steps).cpu()


def sample_batch(model, sampler_name: str, sigmas: Tensor, batch_shape: Sequence[int], seed: int,
                 repulsion: Repulsion | None = None) -> Tensor:
    """One batch [N, C, H, W] (`exact_models.sample_latents`), wrapped in the pack's Repulsive Sampler when
    `repulsion` is given."""
    wrapper = None if repulsion is None else (lambda sampler: repulsive_sampler(sampler, repulsion))
    return sample_latents(model, sampler_name, sigmas, batch_shape, seed, wrapper)


class ParticleGuidanceKernel:
    """Particle Guidance's RBF kernel (Corso et al., ICLR 2024): exp(-d^2 / h), h = median(d^2) / log(N - 1).

    The pack's median rule divides by log(N + 1) instead. Used with absolute strength alpha, the shift of the
    denoised prediction is alpha * sigma^2 * R: the guidance is proportional to sigma^2, as in PG.
    """

    def __call__(self, features: Tensor, anchors: Tensor) -> Tensor:
        count = anchors.shape[0]
        if count < 3:
            raise ValueError("Particle Guidance's bandwidth median(d^2) / log(N - 1) needs a batch of 3 or more.")
        bandwidth = torch.pdist(anchors.detach()).square().median() / math.log(count - 1)
        if bandwidth == 0:
            bandwidth = torch.ones_like(bandwidth)
        return torch.exp(-squared_distances(features, anchors) / bandwidth)


class ClassProbabilities(nn.Module):
    """Embedder: class probabilities [N, K] = softmax(logits(latents [N, C, H, W], sigma [N] or None)), for
    a benchmark-side classifier (the pack's collision objective re-tempers them)."""

    def __init__(self, logits: Callable[[Tensor, Tensor | None], Tensor]) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, latents: Tensor, sigma: Tensor | None = None) -> Tensor:
        return torch.softmax(self.logits(latents, sigma), dim=1)


@dataclass(frozen=True)
class ModuleRecipe:
    """An EMBEDDER recipe handing out a ready-made embedder (the benchmark knows its own latent space)."""

    label: str
    module: nn.Module

    def build(self, latent_channels: int, latent_format) -> nn.Module:
        return self.module


def repulsion_with(settings: RepulsionSettings, recipe=None, objective: Objective | None = None) -> Repulsion:
    """The pack's `Repulsion` with an embedder recipe (default: the latent) and an objective (default: the
    thesis's RBF kernel sum with the median bandwidth)."""
    return Repulsion(settings, objective or make_objective("kernel_sum", "rbf"), recipe)


def trained_style_embedder(model, latents: Tensor, labels: Tensor, class_names: Sequence[str],
                           epochs: int = STYLE_EPOCHS) -> StyleEmbedderRecipe:
    """A style embedder (class-probability output, the node's default) trained by Train Style Embedder's
    own function on labelled clean `latents` [M, C, H, W] in the denoiser's space, for `model`."""
    data = StyleLatents(model.get_model_object("latent_format").process_out(latents), labels, tuple(class_names),
                        "benchmark samples")
    options = TrainingOptions(epochs=epochs, batch_size=STYLE_BATCH, validation_fraction=0.2, seed=0)
    classifier, history = train_for_model(model, data, options)
    print(f"style embedder: {classifier.metadata['clean_validation_accuracy']} clean / "
          f"{classifier.metadata['validation_accuracy']} noisy validation accuracy, best of {len(history)} epochs",
          flush=True)
    return StyleEmbedderRecipe(classifier, "trained style embedder")


def node_defaults() -> dict:
    """The repulsion widgets' defaults exactly as the nodes declare them."""
    return repulsion_defaults()


def node_repulsion(embedder=None, **changes) -> Repulsion:
    """The `Repulsion` the Repulsive Sampler node builds at its defaults (with `changes` applied)."""
    return build_repulsion(embedder=embedder, **{**node_defaults(), **changes})


@dataclass(frozen=True)
class Method:
    """One way of sampling a batch: a family (one line of the Pareto figure) at one setting.

    make: returns a fresh `Repulsion`, or None for i.i.d. sampling.
    """

    family: str
    setting: str
    make: Callable[[], Repulsion | None]


IID = Method("i.i.d.", "-", lambda: None)


def method_family(name: str, strengths: Sequence[float], settings: Callable[[float], RepulsionSettings],
                  **repulsion_options) -> list[Method]:
    """The family `name` at each strength; `settings(strength)` gives its RepulsionSettings and
    `repulsion_options` (recipe, objective) go to `repulsion_with`."""
    return [Method(name, f"{strength:g}",
                   lambda strength=strength: repulsion_with(settings(strength), **repulsion_options))
            for strength in strengths]


@dataclass(frozen=True)
class Bench:
    """What a benchmark samples and how it scores a batch.

    score: per-batch figures {name: float} of samples [N, *latent_shape] in the denoiser's space.
    """

    model: object
    sigmas: Tensor
    latent_shape: tuple[int, ...]
    score: Callable[[Tensor], dict]
    figures: tuple[str, ...]

    def measure(self, method: Method, sampler_name: str, batch_size: int, seeds: int) -> dict:
        """Mean figures over batches sampled with seeds 0 .. seeds-1 (the same seeds for every method)."""
        started = time.perf_counter()
        rows = [self.score(sample_batch(self.model, sampler_name, self.sigmas, (batch_size, *self.latent_shape),
                                        seed, method.make()))
                for seed in range(seeds)]
        row = {"family": method.family, "setting": method.setting, "sampler": sampler_name, "n": batch_size,
               **mean_figures(rows, self.figures), "ms_per_batch": 1e3 * (time.perf_counter() - started) / seeds}
        print(f"N={batch_size:<2} {sampler_name:<15} {method.family:<38} {method.setting:>5}  "
              + "  ".join(f"{name} {row[name]:.3f}" for name in self.figures)
              + f"  ({row['ms_per_batch']:.0f} ms/batch)", flush=True)
        return row


def mean_figures(rows: Sequence[dict], keys: Sequence[str]) -> dict:
    """The mean of every key in `keys` over `rows`, and its standard error as `<key>_se`."""
    summary = {}
    for key in keys:
        values = [row[key] for row in rows]
        summary[key] = statistics.fmean(values)
        summary[f"{key}_se"] = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return summary


def add_change_vs_iid(rows: list[dict], key: str) -> None:
    """Add `<key>_change_pct`: the change of `key` relative to i.i.d. at the same N and sampler, in % of
    |i.i.d.| (so negative means lower, e.g. a worse log-likelihood or confidence)."""
    iid = {(row["n"], row["sampler"]): row[key] for row in rows if row["family"] == IID.family}
    for row in rows:
        reference = iid[(row["n"], row["sampler"])]
        row[f"{key}_change_pct"] = 100 * (row[key] - reference) / abs(reference)


def over_samplers(rows: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """Rows averaged over the samplers, one per (N, family, setting), with sampler "mean"."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["n"], row["family"], row["setting"]), []).append(row)
    return [{"n": n, "family": family, "setting": setting, "sampler": "mean",
             **{key: statistics.fmean(member[key] for member in members) for key in keys}}
            for (n, family, setting), members in groups.items()]


def best_within(rows: Sequence[dict], batch_size: int, diversity: str, quality_change: str, floor_pct: float,
                family: str) -> dict:
    """The row of `family` at `batch_size` with the highest `diversity` among those whose `quality_change`
    >= floor_pct."""
    allowed = [row for row in rows
               if row["n"] == batch_size and row["family"] == family and row[quality_change] >= floor_pct]
    return max(allowed, key=lambda row: row[diversity])


def series_by_family(rows: Sequence[dict], batch_size: int, x_key: str, y_key: str) -> dict:
    """{family: [(x, y), ...]} of the rows at `batch_size`, in row order (increasing strength)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row["n"] == batch_size:
            series.setdefault(row["family"], []).append((row[x_key], row[y_key]))
    return series


def parse_arguments(description: str, default_seeds: int) -> argparse.Namespace:
    """--seeds (batches per configuration) and --threads (applied to torch here)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, default=default_seeds,
                        help="batches per configuration (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s)")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    return arguments


def write_results(stem: str, payload: dict, tables: dict[str, str], panels: Sequence[Panel]) -> None:
    """benchmarks/results/<stem>.json (payload), <stem>.md (titled tables) and <stem>_pareto.png."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"torch": torch.__version__, **payload}, indent=2))
    (RESULTS / f"{stem}.md").write_text("".join(f"## {title}\n\n{table}\n\n" for title, table in tables.items()))
    pareto_figure(panels, RESULTS / f"{stem}_pareto.png")
    print(f"wrote benchmarks/results/{stem}.json, {stem}.md and {stem}_pareto.png")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- Pareto figure -------------------------------------------------------------------------------------

# Colour-blind-safe palette (Okabe-Ito), then greys.
PALETTE = [(0, 0, 0), (230, 159, 0), (86, 180, 233), (0, 158, 115), (213, 94, 0), (0, 114, 178),
           (204, 121, 167), (240, 228, 66), (120, 120, 120), (170, 170, 170)]
PANEL_SIZE = (420, 360)
MARGIN = dict(left=58, right=14, top=44, bottom=44)
LEGEND_ROW = 18
LEGEND_COLUMN_WIDTH = 400


@dataclass(frozen=True)
class Panel:
    """One scatter panel: per family, its points (x, y) in the order of increasing strength.

    guides: dashed reference lines, ("x" | "y", value) in data units (e.g. targets).
    """

    title: str
    x_label: str
    y_label: str
    series: dict[str, list[tuple[float, float]]]
    guides: tuple[tuple[str, float], ...] = ()


def pareto_figure(panels: Sequence[Panel], path: Path) -> None:
    """Draw `panels` side by side with one shared legend below them, and save a PNG at `path`."""
    families = list(dict.fromkeys(family for panel in panels for family in panel.series))
    colours = {family: PALETTE[index % len(PALETTE)] for index, family in enumerate(families)}
    width = PANEL_SIZE[0] * len(panels)
    columns = max(1, width // LEGEND_COLUMN_WIDTH)
    height = PANEL_SIZE[1] + LEGEND_ROW * math.ceil(len(families) / columns) + 8
    figure = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(figure)
    font = _font(12)
    for index, panel in enumerate(panels):
        _draw_panel(draw, font, panel, colours, left=index * PANEL_SIZE[0])
    _draw_legend(draw, font, families, colours, top=PANEL_SIZE[1], column_width=width / columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.save(path)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _draw_panel(draw, font, panel: Panel, colours: dict, left: int) -> None:
    box = (left + MARGIN["left"], MARGIN["top"], left + PANEL_SIZE[0] - MARGIN["right"],
           PANEL_SIZE[1] - MARGIN["bottom"])
    points = [point for series in panel.series.values() for point in series]
    x_range = _padded_range([x for x, _ in points] + [value for axis, value in panel.guides if axis == "x"])
    y_range = _padded_range([y for _, y in points] + [value for axis, value in panel.guides if axis == "y"])

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (box[0] + (x - x_range[0]) / (x_range[1] - x_range[0]) * (box[2] - box[0]),
                box[3] - (y - y_range[0]) / (y_range[1] - y_range[0]) * (box[3] - box[1]))

    draw.rectangle(box, outline=(90, 90, 90))
    _draw_ticks(draw, font, box, x_range, y_range, to_pixel)
    for axis, value in panel.guides:
        start, end = (to_pixel(value, y_range[0]), to_pixel(value, y_range[1])) if axis == "x" else \
            (to_pixel(x_range[0], value), to_pixel(x_range[1], value))
        _dashed_line(draw, start, end, (150, 150, 150))
    for family, series in panel.series.items():
        pixels = [to_pixel(x, y) for x, y in series]
        if len(pixels) > 1:
            draw.line(pixels, fill=colours[family], width=2)
        for x, y in pixels:
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colours[family], outline="white")
    draw.text((left + 8, 6), panel.title, fill="black", font=font)
    draw.text(((box[0] + box[2]) / 2 - draw.textlength(panel.x_label, font=font) / 2, box[3] + 24),
              panel.x_label, fill="black", font=font)
    draw.text((left + 8, box[1] - 18), panel.y_label, fill="black", font=font)


def _padded_range(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = 0.08 * (high - low) if high > low else 0.5
    return low - pad, high + pad


def _draw_ticks(draw, font, box, x_range, y_range, to_pixel) -> None:
    for value in _nice_ticks(*x_range):
        x, _ = to_pixel(value, y_range[0])
        draw.line((x, box[3], x, box[3] + 4), fill=(90, 90, 90))
        label = f"{value:g}"
        draw.text((x - draw.textlength(label, font=font) / 2, box[3] + 6), label, fill="black", font=font)
    for value in _nice_ticks(*y_range):
        _, y = to_pixel(x_range[0], value)
        draw.line((box[0] - 4, y, box[0], y), fill=(90, 90, 90))
        label = f"{value:g}"
        draw.text((box[0] - 6 - draw.textlength(label, font=font), y - 7), label, fill="black", font=font)


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) inside [low, high]."""
    raw_step = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = min((factor * magnitude for factor in (1, 2, 5, 10) if factor * magnitude >= raw_step))
    first = math.ceil(low / step) * step
    return [round(first + index * step, 10) for index in range(int((high - first) / step) + 1)]


def _dashed_line(draw, start, end, colour, dash: float = 6.0) -> None:
    length = math.dist(start, end)
    pieces = max(1, int(length / dash))
    for piece in range(0, pieces, 2):
        fraction_start, fraction_end = piece / pieces, min(piece + 1, pieces) / pieces
        draw.line([(start[0] + (end[0] - start[0]) * fraction, start[1] + (end[1] - start[1]) * fraction)
                   for fraction in (fraction_start, fraction_end)], fill=colour, width=1)


def _draw_legend(draw, font, families: Sequence[str], colours: dict, top: int, column_width: float) -> None:
    columns = max(1, round(draw.im.size[0] / column_width))
    for index, family in enumerate(families):
        x = 16 + (index % columns) * column_width
        y = top + 4 + (index // columns) * LEGEND_ROW
        draw.line((x, y + 7, x + 22, y + 7), fill=colours[family], width=2)
        draw.ellipse((x + 7, y + 3, x + 15, y + 11), fill=colours[family])
        draw.text((x + 30, y), family, fill="black", font=font)
