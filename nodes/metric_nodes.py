"""Diversity Metric and Diversity Compare: how different the images of a batch are, in numbers and a plot.

Both nodes are output nodes (they run with nothing connected downstream). The plot shows on the node as a
preview image; the report text is the `report` output and the `text` key of the UI output (what the
history holds for API clients; ComfyUI's frontend shows that key only for nodes with a display extension,
so users read it through Preview as Text). Without a reference set the Frechet output is -1 (distances
are never negative, and a NaN would break the UI's JSON).
"""
from __future__ import annotations

from dataclasses import dataclass

import nodes as comfy_nodes
import torch
from PIL import Image, ImageDraw

from ..metrics import compare_reports, diversity_report, format_report, report_figure, to_image_tensor
from .feature_sources import ASPECTS, SOURCES, Batch, FeatureSpace, choose_feature_space
from .validation import require_plain_text

CATEGORY = "particle_repulsion/metrics"
NO_REFERENCE = -1.0
LABEL_BAND_HEIGHT = 18
MAX_LABEL_LENGTH = 100  # characters: a label names a batch in one line of the report and above its plot

FEATURES_TOOLTIP = (
    "What turns each image into numbers. auto: CLIP vision if connected, else the embedder (on the latent), "
    "else pixels (on images), else the raw latent. clip_vision: the connected CLIP vision model's image "
    "embedding (meaning and content). embedder: the connected EMBEDDER on the latent batch. pixels: images "
    "shrunk to 16x16 (colour and layout only, needs no model). latent: the raw latent values.")
ASPECT_TOOLTIP = (
    "Which part of the features to compare. whole: the full feature vector. location: where things are "
    "(channel-averaged map on an 8x8 grid, from the thesis). style: which features occur together wherever "
    "they are (Gram matrix, from the thesis; with CLIP vision about half a million numbers per image).")
PROMPT_GROUPS_TOOLTIP = (
    "How many prompts the batch holds, one after another in equal parts (e.g. 2 for a batch of 8 made "
    "from 2 prompts x 4 images). Diversity is measured within each prompt and averaged. 1: one prompt.")


def measurement_inputs() -> dict:
    """The widgets both nodes share, in their saved-workflow order."""
    return {
        "features": (list(SOURCES), {"default": "auto", "tooltip": FEATURES_TOOLTIP}),
        "aspect": (list(ASPECTS), {"default": "whole", "tooltip": ASPECT_TOOLTIP}),
        "prompt_groups": ("INT", {"default": 1, "min": 1, "max": 4096, "tooltip": PROMPT_GROUPS_TOOLTIP}),
    }


def plot_size_inputs(default_height: int, min_height: int) -> dict:
    return {
        "plot_width": ("INT", {"default": 768, "min": 256, "max": 4096, "step": 8,
                               "tooltip": "Width of the plot image in pixels."}),
        "plot_height": ("INT", {"default": default_height, "min": min_height, "max": 4096, "step": 8,
                                "tooltip": "Height of the plot image in pixels."}),
    }


def shared_optional_inputs() -> dict:
    """Optional sockets both nodes share: the reference set and the models the feature sources use."""
    return {
        "reference_images": ("IMAGE", {"tooltip": "Optional 'maximum diversity' set: the Frechet distance to "
                                                  "it is reported (lower = closer to its diversity)."}),
        "reference_latent": ("LATENT", {"tooltip": "The reference set as latents (for the embedder and latent "
                                                   "features)."}),
        "clip_vision": ("CLIP_VISION", {"tooltip": "A CLIP vision model (Load CLIP Vision), for clip_vision "
                                                   "features."}),
        "embedder": ("EMBEDDER", {"tooltip": "An embedder (Repulsion Embedder), for embedder features on the "
                                             "latent batch."}),
        "model": ("MODEL", {"tooltip": "Only for embedders that need the model's latent format (latent_rgb): "
                                       "the model that made the latents."}),
    }


@dataclass(frozen=True)
class Measurement:
    """A batch's feature table `[N, F]` and its report (see `metrics.report`)."""

    features: torch.Tensor
    report: dict


@dataclass(frozen=True)
class ReferenceSet:
    """The "maximum diversity" set and its feature table `[M, F]`, computed once for every batch."""

    batch: Batch
    features: torch.Tensor


def measure(space: FeatureSpace, batch: Batch, reference: ReferenceSet | None, prompt_groups: int) -> Measurement:
    """Features of `batch` and its diversity report, with the Frechet distance to `reference` if given."""
    features = space.features(batch)
    if reference is not None:
        require_matching_reference(space, batch, features, reference)
    reference_features = None if reference is None else reference.features
    report = diversity_report(features, reference_features, prompt_labels(batch.size, prompt_groups))
    return Measurement(features, report)


def reference_set(space: FeatureSpace, images, latent) -> ReferenceSet | None:
    """The reference inputs measured in `space`, or None when neither is connected."""
    batch = Batch.from_inputs("the reference set", images, latent)
    if batch is None:
        return None
    if batch.size < 2:
        raise ValueError("The reference set has 1 image; the Frechet distance fits a mean and a spread to it, "
                         "which takes at least 2 images (many more than the batch is better).")
    return ReferenceSet(batch, space.features(batch))


def require_matching_reference(space: FeatureSpace, batch: Batch, features: torch.Tensor,
                               reference: ReferenceSet) -> None:
    """Refuse a reference set that cannot be compared with `batch` and its features `[N, F]`."""
    space.check_comparable(batch, reference.batch)
    if reference.features.shape[1] != features.shape[1]:
        raise ValueError(
            f"{batch.name.capitalize()} gives {features.shape[1]} features per image but the reference set "
            f"gives {reference.features.shape[1]} ({space.describe()}); both sets must be the same kind of "
            "input at the same size, measured with the same model.")


def prompt_labels(batch_size: int, prompt_groups: int) -> list[int] | None:
    """One prompt index per image for `prompt_groups` equal consecutive groups; None for one group."""
    if prompt_groups == 1:
        return None
    if batch_size % prompt_groups:
        raise ValueError(f"prompt_groups is {prompt_groups}, but {batch_size} images cannot be split into "
                         f"{prompt_groups} equal groups; set it to the number of prompts in the batch.")
    group_size = batch_size // prompt_groups
    return [index // group_size for index in range(batch_size)]


def connected_batch(name: str, images, latent, inputs_hint: str) -> Batch:
    """The batch of a node's IMAGE/LATENT inputs, refused when nothing is connected or it has one image."""
    batch = Batch.from_inputs(name, images, latent)
    if batch is None:
        raise ValueError(f"Nothing to measure for {name}: connect an IMAGE batch or a LATENT batch to "
                         f"{inputs_hint}.")
    if batch.size < 2:
        raise ValueError(f"{name.capitalize()} has 1 image; diversity needs at least 2. Set the batch size to 2 "
                         "or more (e.g. in Empty Latent Image).")
    return batch


def model_latent_format(model):
    """The latent format of a MODEL input, or None when no model is connected."""
    return None if model is None else model.get_model_object("latent_format")


def shown_on_node(text: str, plot: torch.Tensor, result: tuple) -> dict:
    """A node return value that also shows `text` and the `plot` IMAGE `[1, H, W, 3]` on the node."""
    preview = comfy_nodes.PreviewImage().save_images(plot, filename_prefix="ParticleRepulsionDiversity")
    return {"ui": {"text": [text], **preview["ui"]}, "result": result}


def reference_line(reference: ReferenceSet | None) -> list[str]:
    return [] if reference is None else [f"Reference set: {reference.batch.size} images"]


class DiversityMetric:
    """Measure how different the images of one batch are (Vendi, mean distances, Frechet to a reference)."""

    DESCRIPTION = ("Measures how different the images of a batch are from each other. Vendi score: the "
                   "effective number of distinct images (1 = all alike, N = all different). Mean distances: "
                   "how far apart the images are on average. With a reference set (a 'maximum diversity' "
                   "collection), the Frechet distance to it (lower = closer to that diversity). Shows its plot "
                   "on the node (pairwise-similarity heatmap and a 2-D map of the batch); connect `report` to "
                   "Preview as Text to read the full report.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "FLOAT", "STRING", "IMAGE")
    RETURN_NAMES = ("vendi", "mean_l2_distance", "mean_cosine_distance", "frechet", "report", "plot")
    OUTPUT_TOOLTIPS = (
        "Vendi score: effective number of distinct images, from 1 to the batch (or prompt group) size.",
        "Mean Euclidean distance between two images' features (in feature units).",
        "Mean cosine distance between two images' features (0 = same direction, 1 = unrelated).",
        "Frechet distance to the reference set (lower = closer to its diversity); -1 without a reference.",
        "The report as text.",
        "Similarity heatmap and 2-D projection of the batch.",
    )
    OUTPUT_NODE = True
    FUNCTION = "measure_diversity"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {**measurement_inputs(), **plot_size_inputs(default_height=384, min_height=64)},
            "optional": {
                "images": ("IMAGE", {"tooltip": "The batch to measure, as images (e.g. from VAE Decode)."}),
                "latent": ("LATENT", {"tooltip": "The batch to measure, as a latent (e.g. from a KSampler)."}),
                **shared_optional_inputs(),
            },
        }

    def measure_diversity(self, features, aspect, prompt_groups, plot_width, plot_height, images=None,
                          latent=None, reference_images=None, reference_latent=None, clip_vision=None,
                          embedder=None, model=None):
        batch = connected_batch("the batch", images, latent, "`images` or `latent`")
        space = choose_feature_space(features, aspect, batch, clip_vision, embedder, model_latent_format(model))
        reference = reference_set(space, reference_images, reference_latent)
        measured = measure(space, batch, reference, prompt_groups)
        report = measured.report
        text = "\n".join([f"Features: {space.describe()}", *reference_line(reference), format_report(report)])
        plot = to_image_tensor(report_figure(measured.features, batch.images, size=(plot_width, plot_height)))
        frechet = NO_REFERENCE if report["frechet"] is None else report["frechet"]
        result = (report["vendi"], report["mean_l2_distance"], report["mean_cosine_distance"], frechet, text, plot)
        return shown_on_node(text, plot, result)


class DiversityCompare:
    """Measure two batches (e.g. without and with repulsion) the same way and report them side by side."""

    DESCRIPTION = ("Measures two batches the same way, e.g. the same seed without and with repulsion, and "
                   "reports them side by side with the change in every metric. Use the same batch size for "
                   "both: the Vendi score grows with it. The plot shows each batch's similarity heatmap and "
                   "2-D map, A on top; connect `report` to Preview as Text to read the comparison.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "FLOAT", "STRING", "IMAGE")
    RETURN_NAMES = ("vendi_a", "vendi_b", "report", "plot")
    OUTPUT_TOOLTIPS = (
        "Vendi score of batch A (effective number of distinct images).",
        "Vendi score of batch B.",
        "Both reports side by side, as text.",
        "Heatmap and 2-D projection of batch A (top) and batch B (bottom).",
    )
    OUTPUT_NODE = True
    FUNCTION = "compare"

    @classmethod
    def INPUT_TYPES(cls):
        labels = {
            "label_a": ("STRING", {"default": "without",
                                   "tooltip": f"Name of batch A in the report (one line, up to {MAX_LABEL_LENGTH} characters)."}),
            "label_b": ("STRING", {"default": "with",
                                   "tooltip": f"Name of batch B in the report (one line, up to {MAX_LABEL_LENGTH} characters)."}),
        }
        return {
            "required": {**measurement_inputs(), **labels,
                         **plot_size_inputs(default_height=768, min_height=2 * (64 + LABEL_BAND_HEIGHT))},
            "optional": {
                "images_a": ("IMAGE", {"tooltip": "Batch A as images (e.g. without repulsion)."}),
                "latent_a": ("LATENT", {"tooltip": "Batch A as a latent."}),
                "images_b": ("IMAGE", {"tooltip": "Batch B as images (e.g. with repulsion)."}),
                "latent_b": ("LATENT", {"tooltip": "Batch B as a latent."}),
                **shared_optional_inputs(),
            },
        }

    def compare(self, features, aspect, prompt_groups, label_a, label_b, plot_width, plot_height, images_a=None,
                latent_a=None, images_b=None, latent_b=None, reference_images=None, reference_latent=None,
                clip_vision=None, embedder=None, model=None):
        require_plain_text("label_a", label_a, MAX_LABEL_LENGTH)
        require_plain_text("label_b", label_b, MAX_LABEL_LENGTH)
        batch_a = connected_batch(f"batch A ({label_a})", images_a, latent_a, "`images_a` or `latent_a`")
        batch_b = connected_batch(f"batch B ({label_b})", images_b, latent_b, "`images_b` or `latent_b`")
        space = choose_feature_space(features, aspect, batch_a, clip_vision, embedder, model_latent_format(model))
        space.check_comparable(batch_a, batch_b)
        reference = reference_set(space, reference_images, reference_latent)
        measured = [measure(space, batch, reference, prompt_groups) for batch in (batch_a, batch_b)]
        text = comparison_text(space, reference, measured, (label_a, label_b))
        titles = (f"A: {label_a}", f"B: {label_b}")
        plot = to_image_tensor(stacked_figures(measured, (batch_a, batch_b), titles, (plot_width, plot_height)))
        return shown_on_node(text, plot, (measured[0].report["vendi"], measured[1].report["vendi"], text, plot))


def comparison_text(space: FeatureSpace, reference: ReferenceSet | None, measured: list[Measurement],
                    labels: tuple[str, str]) -> str:
    reports = [measurement.report for measurement in measured]
    sizes = ", ".join(f"{label}: {report['images']} images" for label, report in zip(labels, reports))
    lines = [f"Features: {space.describe()}", f"Batches: {sizes}", *reference_line(reference),
             compare_reports(reports[0], reports[1], labels)]
    lines += [f"Note ({label}): {note}" for label, report in zip(labels, reports) for note in report["notes"]]
    return "\n".join(lines)


def stacked_figures(measured: list[Measurement], batches: tuple[Batch, ...], titles: tuple[str, ...],
                    size: tuple[int, int]) -> Image.Image:
    """Each batch's `report_figure` under a band with its title, stacked top to bottom into one image of `size`."""
    width, height = size
    panel_height = height // len(measured) - LABEL_BAND_HEIGHT
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (measurement, batch, title) in enumerate(zip(measured, batches, titles)):
        top = index * (panel_height + LABEL_BAND_HEIGHT)
        draw.text((6, top + 3), title, fill="black")
        figure = report_figure(measurement.features, batch.images, size=(width, panel_height))
        canvas.paste(figure, (0, top + LABEL_BAND_HEIGHT))
    return canvas
