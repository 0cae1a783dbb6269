"""Diversity figures drawn with Pillow only: a similarity heatmap and a 2-D PCA projection.

Every figure is an RGB `PIL.Image` of exactly the requested `(width, height)` in pixels;
`to_image_tensor` turns one into a ComfyUI IMAGE `[1, H, W, 3]` for a node's output.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ._inputs import feature_matrix
from .diversity import cosine_similarity_matrix

# Five colours of the viridis map (dark violet -> yellow), interpolated linearly in between:
# perceptually ordered and readable by colour-blind viewers.
_COLOUR_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)
_BACKGROUND = (255, 255, 255)
_INK = (30, 30, 30)
_FAINT = (200, 200, 200)
_MIN_PANEL = 64
_LABELLED_MAX_IMAGES = 32


def colour_map(values: np.ndarray) -> np.ndarray:
    """Colours `[..., 3]` uint8 for `values` in [0, 1] (clipped), from dark violet (0) to yellow (1)."""
    positions = np.clip(values, 0.0, 1.0) * (len(_COLOUR_ANCHORS) - 1)
    anchor_positions = np.arange(len(_COLOUR_ANCHORS))
    channels = [np.interp(positions, anchor_positions, _COLOUR_ANCHORS[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def similarity_heatmap(
    features, size: tuple[int, int] = (384, 384), value_range: tuple[float, float] = (-1.0, 1.0)
) -> Image.Image:
    """N x N cosine similarity of the rows of `features` `[N, F]` as a heatmap with a colour bar.

    `value_range` maps to the ends of the colour scale; the fixed default (-1, 1) keeps two
    heatmaps (e.g. without and with repulsion) comparable. Cells carry image indices when
    N <= 32 and their values when they are large enough to hold the text.
    """
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with low < high; got {value_range}.")
    canvas, draw, font = _new_panel(size, "Cosine similarity")
    similarity = cosine_similarity_matrix(features).numpy()
    count = similarity.shape[0]
    label_margin = _text_height(font) + 4 if count <= _LABELLED_MAX_IMAGES else 0
    bar_width = round(_text_width(draw, font, "-0.00")) + 18
    top = _title_height(font) + label_margin
    side = min(canvas.width - label_margin - bar_width - 8, canvas.height - top - 4)
    cell = side / count
    colours = colour_map((similarity - low) / (high - low))
    canvas.paste(Image.fromarray(colours).resize((side, side), Image.NEAREST), (label_margin, top))
    if label_margin:
        _draw_index_labels(draw, font, (label_margin, top), cell, count)
    if cell >= _text_width(draw, font, "0.00") + 4:
        _draw_cell_values(draw, font, similarity, colours, (label_margin, top), cell)
    _draw_colour_bar(draw, font, (canvas.width - bar_width + 2, top, side), value_range)
    return canvas


def pca_2d(features) -> np.ndarray:
    """Project the rows of `features` `[N, F]` onto their first two principal axes; `[N, 2]` float64.

    Missing axes (N < 3 or F < 2) are zero. Each axis's sign is fixed so that its largest
    coordinate is positive, which makes the picture reproducible.
    """
    matrix = feature_matrix(features, min_samples=1)
    centred = matrix - matrix.mean(dim=0, keepdim=True)
    left_vectors, singular_values, _ = torch.linalg.svd(centred, full_matrices=False)
    coordinates = np.zeros((matrix.shape[0], 2))
    kept = min(2, singular_values.shape[0])
    coordinates[:, :kept] = (left_vectors[:, :kept] * singular_values[:kept]).numpy()
    strongest = coordinates[np.abs(coordinates).argmax(axis=0), [0, 1]]
    return coordinates * np.where(strongest < 0, -1.0, 1.0)


def projection_plot(features, thumbnails=None, size: tuple[int, int] = (384, 384)) -> Image.Image:
    """2-D PCA projection of the rows of `features` `[N, F]`, one mark per image.

    With `thumbnails` (`[N, H, W, 3]` floats in 0..1, numpy or torch: ComfyUI's IMAGE layout) each
    image is pasted at its point; otherwise a numbered dot marks it. Both axes share one scale, so
    distances on the picture follow distances between the projected features.
    """
    canvas, draw, font = _new_panel(size, "PCA projection")
    coordinates = pca_2d(features)
    count = coordinates.shape[0]
    pictures = None if thumbnails is None else _thumbnail_images(thumbnails, count)
    top = _title_height(font)
    area = (4, top, canvas.width - 4, canvas.height - 4)
    draw.rectangle(area, outline=_FAINT)
    mark_size = int(np.clip(min(area[2] - area[0], area[3] - area[1]) / (math.sqrt(count) + 1.5), 12, 128))
    centres = _fit_points(coordinates, area, margin=mark_size // 2 + 4)
    for index, (x, y) in enumerate(centres):
        if pictures is None:
            _draw_numbered_dot(draw, font, (x, y), index, count, radius=max(4, mark_size // 8))
        else:
            _paste_thumbnail(canvas, font, pictures[index], (x, y), mark_size, index)
    return canvas


def report_figure(features, thumbnails=None, size: tuple[int, int] = (768, 384)) -> Image.Image:
    """The similarity heatmap (left half) and the PCA projection (right half) in one image of `size`."""
    width, height = _checked_size(size, min_width=2 * _MIN_PANEL)
    left_width = width // 2
    figure = Image.new("RGB", (width, height), _BACKGROUND)
    figure.paste(similarity_heatmap(features, size=(left_width, height)), (0, 0))
    figure.paste(projection_plot(features, thumbnails, size=(width - left_width, height)), (left_width, 0))
    return figure


def to_image_tensor(picture: Image.Image) -> torch.Tensor:
    """A PIL image as a ComfyUI IMAGE: float32 `[1, H, W, 3]` with values in 0..1."""
    pixels = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).unsqueeze(0)


def _new_panel(size: tuple[int, int], title: str):
    """A white canvas of `size` with `title` centred on top, its drawing context and text font."""
    width, height = _checked_size(size, min_width=_MIN_PANEL)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(9, min(width, height) // 30))
    title_width = _text_width(draw, font, title)
    draw.text(((width - title_width) / 2, 2), title, fill=_INK, font=font)
    return canvas, draw, font


def _checked_size(size: tuple[int, int], min_width: int) -> tuple[int, int]:
    width, height = (int(value) for value in size)
    if width < min_width or height < _MIN_PANEL:
        raise ValueError(f"A figure needs at least {min_width} x {_MIN_PANEL} pixels; got {width} x {height}.")
    return width, height


def _font(pixel_size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at `pixel_size`; Pillow < 10.1 only has a fixed-size bitmap font."""
    try:
        return ImageFont.load_default(size=pixel_size)
    except TypeError:
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, font, text: str) -> float:
    return draw.textlength(text, font=font)


def _text_height(font) -> int:
    left, top, right, bottom = font.getbbox("0123456789")
    return bottom - top


def _title_height(font) -> int:
    return _text_height(font) + 8


def _draw_index_labels(draw, font, origin: tuple[int, int], cell: float, count: int) -> None:
    """Image indices along the top and the left edge of the heatmap whose corner is at `origin`."""
    left, top = origin
    height = _text_height(font)
    for index in range(count):
        label = str(index)
        middle = (index + 0.5) * cell
        draw.text((left + middle - _text_width(draw, font, label) / 2, top - height - 3), label, fill=_INK, font=font)
        draw.text((left - _text_width(draw, font, label) - 2, top + middle - height / 2), label, fill=_INK, font=font)


def _draw_cell_values(draw, font, similarity: np.ndarray, colours: np.ndarray, origin, cell: float) -> None:
    """Each cell's similarity, two decimals, in dark ink on light cells and white ink on dark ones."""
    left, top = origin
    height = _text_height(font)
    luminance = colours @ np.array([0.299, 0.587, 0.114])
    for (row, col), value in np.ndenumerate(similarity):
        text = f"{value:.2f}"
        x = left + (col + 0.5) * cell - _text_width(draw, font, text) / 2
        y = top + (row + 0.5) * cell - height / 2
        draw.text((x, y), text, fill=_INK if luminance[row, col] > 110 else _BACKGROUND, font=font)


def _draw_colour_bar(draw, font, placement: tuple[int, int, int], value_range: tuple[float, float]) -> None:
    """A vertical colour scale at (left, top) of length `placement[2]`, labelled at both ends and the middle."""
    left, top, length = placement
    low, high = value_range
    strip = colour_map(np.linspace(1.0, 0.0, length))
    for offset, colour in enumerate(strip):
        draw.line([(left, top + offset), (left + 8, top + offset)], fill=tuple(int(c) for c in colour))
    height = _text_height(font)
    for fraction in (0.0, 0.5, 1.0):
        value = high - fraction * (high - low)
        y = top + fraction * (length - 1) - height / 2
        draw.text((left + 11, min(max(y, top), top + length - height)), f"{value:.2f}", fill=_INK, font=font)


def _fit_points(coordinates: np.ndarray, area: tuple[int, int, int, int], margin: int) -> list[tuple[int, int]]:
    """Pixel centres for `coordinates` `[N, 2]` inside `area`, one scale for both axes, y pointing up."""
    left, top, right, bottom = area
    usable = np.array([right - left - 2 * margin, bottom - top - 2 * margin], dtype=np.float64).clip(min=1)
    middle = (coordinates.max(axis=0) + coordinates.min(axis=0)) / 2
    spread = coordinates.max(axis=0) - coordinates.min(axis=0)
    scale = np.min(np.where(spread > 0, usable / np.where(spread > 0, spread, 1), np.inf))
    scale = 0.0 if not np.isfinite(scale) else scale
    offsets = (coordinates - middle) * scale
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    return [(round(centre_x + dx), round(centre_y - dy)) for dx, dy in offsets]


def _draw_numbered_dot(draw, font, centre: tuple[int, int], index: int, count: int, radius: int) -> None:
    x, y = centre
    colour = tuple(int(c) for c in colour_map(np.array(index / max(count - 1, 1))))
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=_INK)
    draw.text((x + radius + 2, y - radius - 2), str(index), fill=_INK, font=font)


def _thumbnail_images(thumbnails, count: int) -> list[Image.Image]:
    """PIL images from a ComfyUI IMAGE-like batch `[count, H, W, 3]` of floats in 0..1."""
    pixels = np.asarray(torch.as_tensor(thumbnails).detach().cpu().float())
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.shape[0] != count:
        raise ValueError(
            f"thumbnails must be an image batch [{count}, height, width, 3] matching the features; "
            f"got shape {tuple(pixels.shape)}."
        )
    as_bytes = np.rint(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
    return [Image.fromarray(image) for image in as_bytes]


def _paste_thumbnail(canvas: Image.Image, font, picture: Image.Image, centre: tuple[int, int], box: int, index: int) -> None:
    """Paste `picture` scaled to fit a `box` x `box` square (aspect kept) at `centre`, framed, numbered."""
    scale = box / max(picture.size)
    scaled_size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    thumbnail = picture.resize(scaled_size, Image.BILINEAR)
    x = centre[0] - thumbnail.width // 2
    y = centre[1] - thumbnail.height // 2
    canvas.paste(thumbnail, (x, y))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([x - 1, y - 1, x + thumbnail.width, y + thumbnail.height], outline=_INK)
    label = str(index)
    draw.rectangle([x, y, x + _text_width(draw, font, label) + 3, y + _text_height(font) + 4], fill=_BACKGROUND)
    draw.text((x + 2, y + 1), label, fill=_INK, font=font)
