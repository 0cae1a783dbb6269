"""Training a style embedder inside ComfyUI: the two data sources and the training node.

Data flows through a STYLE_LATENTS socket (`StyleLatents`): labelled latents in the space of
ComfyUI's LATENT type (as VAE Encode gives them, before the model's own scaling), so that either
source can feed the trainer and ComfyUI caches the costly encoding or generation between training runs.

- `StyleLatentsFromFolder`: a folder of labelled images (one sub-folder per style), encoded with a VAE.
- `StyleLatentsFromPrompts`: images the user's own model draws for "{subject} by {style}", keeping the
  model's denoised prediction at several steps of each trajectory (the thesis's recipe).
- `TrainStyleEmbedder`: trains the pure `StyleClassifier` on noisy latents across the model's sigma
  range, saves it into `models/style_embedders/` and outputs it as an EMBEDDER.

`scripts/train_style_embedder.py` reuses `find_style_images`, `encode_style_images`, `train_for_model`
and `style_embedder_path` outside the server.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ..embedders import EpochReport, StyleClassifier, TrainingInterrupted, save_style_embedder, train_style_classifier
from ..embedders.style_classifier import check_class_names
from ..embedders.style_files import check_storable_class_names, existing_file_error
from .embedder_nodes import style_output_input
from .embedder_recipes import STYLE_OUTPUTS, StyleEmbedderRecipe, latent_format_name, percent
from .model_folders import STYLE_EMBEDDERS
from .repulsion import noise_level
from .validation import name_problem, require_finite_number, require_plain_text, require_safe_name, shown_text

LOG = logging.getLogger("particle_repulsion")
CATEGORY = "particle_repulsion/style_training"
STYLE_LATENTS = "STYLE_LATENTS"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")  # what PIL may parse: never EPS, PSD, ... behind a renamed file
MAX_IMAGE_PIXELS = 50_000_000  # per image, decoded (a 45-megapixel photo passes; 10000x10000 does not)
ENCODE_PIXEL_BUDGET = 8 * 512 * 512  # pixels per VAE call: bounds memory and lets Cancel act between chunks
MAX_FOLDER_NAME_BYTES = 128
MAX_FILE_STEM_BYTES = 128  # file_name without ".safetensors": room left for the partial file's suffixes
MAX_SUBJECT_LENGTH = 1000  # characters of one subject line (CLIP reads 77 tokens at a time; longer costs memory)
MAX_BATCH_LATENT_BYTES = 64 * 2**20  # of one training batch (its activations take several times that)
MAX_TRAINING_LATENT_BYTES = 512 * 2**20
FLOAT32_BYTES = 4
EMPTY_LATENT_CHANNELS = 4  # what EmptyLatentImage makes; fix_empty_latent_channels adapts it to the model
MAX_SEED_COUNT = 2**64  # seeds wrap around within ComfyUI's seed range
# Noise-to-signal ratio above which a unit-variance latent is all noise (SD1.5's own schedule tops at 14.6).
MAX_TRAINING_NOISE = 20.0

Progress = Callable[[int], None]  # advance(count): count more units of work are done
EpochCallback = Callable[[int, float, float, float], None]  # (epoch, train acc., validation acc., loss)


@dataclass(frozen=True)
class StyleLatents:
    """Labelled latents for training a style classifier (the STYLE_LATENTS socket).

    latents: `[M, C, h, w]` in LATENT space (as VAE Encode outputs them; the model's `process_in`
        scaling is applied by the trainer).
    labels: `[M]` int64 indices into `class_names`.
    source: where they came from, for the report and the file's metadata.
    groups: `[M]` int64 independent example of every latent (e.g. its sampling trajectory), kept on one
        side of the validation split; None when every latent is its own example.
    """

    latents: Tensor
    labels: Tensor
    class_names: tuple[str, ...]
    source: str
    groups: Tensor | None = None


# --- source (a): a folder of labelled images ---------------------------------------------------------

@dataclass(frozen=True)
class ImageFolder:
    """A folder of style images (one sub-folder per style).

    path: where it is. name: how messages and outputs call it (for the node, relative to ComfyUI's input
    folder: never an absolute server path). root: every style folder and image must resolve (symlinks
    followed) to a place inside it.
    """

    path: Path
    name: str
    root: Path

    @classmethod
    def local(cls, path: Path) -> "ImageFolder":
        """A folder given on the command line: named by its path, anything on the machine allowed."""
        resolved = path.resolve()
        return cls(resolved, str(resolved), Path(resolved.anchor))


@dataclass(frozen=True)
class StyleImage:
    """One training image: `path`, its real location (checked to lie inside the folder's root), and
    `name`, how messages call it (the folder's name / style / file)."""

    path: Path
    name: str


def input_directory() -> Path:
    """ComfyUI's input folder, symlinks resolved."""
    return Path(os.path.realpath(folder_paths.get_input_directory()))


def resolved_inside(path: Path, root: Path) -> Path | None:
    """The real path of `path` (symlinks resolved) when it lies inside `root` (a real path), else None."""
    real = Path(os.path.realpath(path))
    return real if os.path.commonpath([real, root]) == str(root) else None


def is_inside_directory(path: Path, root: Path) -> bool:
    """True when `path` is a directory whose real location lies inside `root` (a real path)."""
    real = resolved_inside(path, root)
    return real is not None and real.is_dir()


def image_folder_choices() -> list[str]:
    """The sub-folders of ComfyUI's input folder the folder node offers, sorted.

    Only names `name_problem` accepts are offered (the frontend's list shows names as HTML, and anyone
    who can reach the server can create sub-folders of input/ through its upload route), and only
    folders whose real location lies inside input/.
    """
    root = input_directory()
    if not root.is_dir():  # INPUT_TYPES must not fail: the whole node would vanish from the UI
        return []
    return sorted(entry.name for entry in os.scandir(root)
                  if name_problem(entry.name, MAX_FOLDER_NAME_BYTES) is None
                  and is_inside_directory(Path(entry.path), root))


def offered_image_folder(folder: str) -> ImageFolder:
    """The input sub-folder `folder`, refused unless it is one of `image_folder_choices()`."""
    if folder not in image_folder_choices():
        raise ValueError(f"The folder {shown_text(folder)} is not a sub-folder of ComfyUI's input folder that this "
                         "node offers; choose one from the list (put your style images in input/<folder>/<style>/, "
                         "using letters, digits, '-', '_', '.' and spaces in the folder's name).")
    root = input_directory()
    return ImageFolder(root / folder, f"input/{folder}", root)


def find_style_images(folder: ImageFolder) -> dict[str, list[StyleImage]]:
    """The images of every style: `{sub-folder name: its images, sorted}`, in sorted style order.

    Only regular files with an image extension whose real location lies inside `folder.root` count.
    Raises ValueError unless there are two or more sub-folders, each with at least two images (one to
    train on, one to validate), and the sub-folder names can be stored as style names.
    """
    images_by_style = {
        style.name: style_images(folder, style)
        for style in sorted(folder.path.iterdir())
        if not style.name.startswith(".") and is_inside_directory(style, folder.root)
    }
    layout_hint = (f"Put the images of every style in its own sub-folder of {folder.name} (e.g. "
                   f"{folder.name}/monet/*.png, {folder.name}/hokusai/*.png); the sub-folder names become the "
                   "style names.")
    if len(images_by_style) < 2:
        raise ValueError(f"Found {len(images_by_style)} style sub-folder(s); at least two are needed. {layout_hint}")
    too_few = [f"{style} ({len(images)})" for style, images in images_by_style.items() if len(images) < 2]
    if too_few:
        raise ValueError(f"Every style needs at least 2 images ({', '.join(IMAGE_EXTENSIONS)}); too few in: "
                         f"{', '.join(too_few)}. {layout_hint}")
    check_storable_class_names(list(images_by_style))
    return images_by_style


def style_images(folder: ImageFolder, style: Path) -> list[StyleImage]:
    """The image files of one style sub-folder, sorted by name, with their real paths."""
    images = []
    for path in sorted(style.iterdir()):
        real = resolved_inside(path, folder.root) if path.suffix.lower() in IMAGE_EXTENSIONS else None
        if real is not None and real.is_file():
            images.append(StyleImage(real, f"{folder.name}/{style.name}/{path.name}"))
    return images


def read_image(image: StyleImage, width: int, height: int) -> Tensor:
    """The image as RGB in [0, 1], centre-cropped to `width:height` and area-resized: `[height, width, 3]`.

    Its size is read from the file's header and refused above `MAX_IMAGE_PIXELS` before anything is
    decoded; only the formats of `IMAGE_FORMATS` are parsed, whatever the file's extension says.
    """
    try:
        with Image.open(image.path, formats=IMAGE_FORMATS) as opened:
            check_image_size(opened.size, image.name)
            rgb = ImageOps.exif_transpose(opened).convert("RGB")
    except Image.DecompressionBombError as error:  # PIL's own guard, at twice its MAX_IMAGE_PIXELS
        raise ValueError(too_large_message(image.name)) from error
    except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        reason = getattr(error, "strerror", None) or str(error).replace(str(image.path), image.name)
        raise ValueError(f"Cannot read the image {image.name} ({reason}); remove it or replace it.") from error
    resized = rgb.resize((width, height), Image.Resampling.BOX, box=centre_crop_box(rgb.size, width, height))
    return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)


def check_image_size(size: tuple[int, int], name: str) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(too_large_message(name, f" is {width}x{height} pixels"))


def too_large_message(name: str, size_text: str = "") -> str:
    return (f"The image {name}{size_text}: more than {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, which this node "
            "does not decode (memory). Downscale it first.")


def centre_crop_box(size: tuple[int, int], width: int, height: int) -> tuple[float, float, float, float]:
    """The largest centred box `(left, top, right, bottom)` of an image of `size` with the aspect `width:height`."""
    image_width, image_height = size
    scale = min(image_width / width, image_height / height)
    crop_width, crop_height = width * scale, height * scale
    left, top = (image_width - crop_width) / 2, (image_height - crop_height) / 2
    return left, top, left + crop_width, top + crop_height


def encode_style_images(vae, images_by_style: Mapping[str, Sequence[StyleImage]], width: int, height: int,
                        advance: Progress, source: str) -> StyleLatents:
    """Encode every style's images with `vae` (`width` x `height` pixels), a few at a time.

    A chunk holds `images_per_chunk` images. `advance(count)` is called
    after every chunk of `count` images (a progress bar, which in the server also stops the work when
    the user presses Cancel).
    """
    labelled_images = [(label, image) for label, images in enumerate(images_by_style.values()) for image in images]
    chunk_size = images_per_chunk(width, height)
    chunks = []
    for start in range(0, len(labelled_images), chunk_size):
        chunk = labelled_images[start:start + chunk_size]
        pixels = torch.stack([read_image(image, width, height) for _, image in chunk])
        chunks.append(vae.encode(pixels))
        advance(len(chunk))
    labels = torch.tensor([label for label, _ in labelled_images], dtype=torch.int64)
    return StyleLatents(torch.cat(chunks), labels, tuple(images_by_style), source)


def images_per_chunk(width: int, height: int) -> int:
    """How many `width` x `height` images one VAE call encodes: `ENCODE_PIXEL_BUDGET` pixels, at least one."""
    return max(1, ENCODE_PIXEL_BUDGET // (width * height))


def check_training_data_size(count: int, channels: int, latent_height: int, latent_width: int) -> None:
    """Refuse, before encoding or drawing, training data over `MAX_TRAINING_LATENT_BYTES` (float32
    latents `[count, channels, latent_height, latent_width]`; the trainer holds a few copies)."""
    size = count * channels * latent_height * latent_width * FLOAT32_BYTES
    if size > MAX_TRAINING_LATENT_BYTES:
        raise ValueError(f"{count} training latents of {channels}x{latent_height}x{latent_width} take "
                         f"{size / 2**20:.0f} MiB, over this node's {MAX_TRAINING_LATENT_BYTES // 2**20} MiB; use "
                         "fewer images or a smaller width and height (the style classifier pools to 4x4 anyway).")


class StyleLatentsFromFolder:
    """Source (a): a folder of labelled images encoded with the user's VAE."""

    DESCRIPTION = ("Training data for Train Style Embedder from your own images: a sub-folder of ComfyUI's input "
                   "folder with one sub-folder per style (the sub-folder name is the style name), each with at least "
                   f"2 images ({', '.join(IMAGE_EXTENSIONS)}). Every image is centre-cropped and resized to width x "
                   "height and encoded with the VAE of the model you will sample with.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (STYLE_LATENTS,)
    RETURN_NAMES = ("style_latents",)
    OUTPUT_TOOLTIPS = ("Labelled latents for Train Style Embedder.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("VAE", {"tooltip": "The VAE of the model the style embedder will be used with."}),
            "folder": (image_folder_choices(), {
                "tooltip": "A sub-folder of ComfyUI's input folder holding one sub-folder of images per style. "
                           "Listed: folders whose names use letters, digits, '-', '_', '.' and spaces."}),
            "width": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 8,
                              "tooltip": "Width in pixels the images are cropped and resized to before encoding."}),
            "height": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 8,
                               "tooltip": "Height in pixels the images are cropped and resized to before encoding."}),
        }}

    def encode(self, vae, folder, width, height):
        image_folder = offered_image_folder(folder)
        images_by_style = find_style_images(image_folder)
        count = sum(len(images) for images in images_by_style.values())
        downscale = vae.spacial_compression_encode()
        check_training_data_size(count, vae.latent_channels, height // downscale, width // downscale)
        progress = comfy.utils.ProgressBar(count)
        return (encode_style_images(vae, images_by_style, width, height, progress.update,
                                    f"image folder {image_folder.name}"),)


# --- source (b): images generated by the user's model from style names ------------------------------

@dataclass(frozen=True)
class GenerationSettings:
    """How `generate_style_latents` draws each prompt's images."""

    images_per_prompt: int
    trajectory_points: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    seed: int
    width: int
    height: int


def prompt_lines(text: str) -> list[str]:
    """The non-empty lines of a multi-line widget, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def kept_steps(steps: int, trajectory_points: int) -> list[int]:
    """Step indices whose denoised prediction is kept: evenly spaced over the second half of the
    schedule, ending at the last step (fewer when the schedule has fewer steps than points)."""
    first = steps // 2
    # From the last step back, so that a single point is the final step.
    positions = np.linspace(steps - 1, first, num=min(trajectory_points, steps - first))
    return sorted({int(round(position)) for position in positions})


def check_generation_plan(styles: Sequence[str], subjects: Sequence[str], settings: GenerationSettings) -> None:
    """Refuse, before any drawing, a plan that cannot give every style 2 or more training latents, and
    style names or subjects too long to store or to prompt with."""
    check_class_names(styles)
    check_storable_class_names(styles)
    if not subjects:
        raise ValueError("Give at least one subject (one per line), e.g. 'a lighthouse at dusk'.")
    for subject in subjects:
        require_plain_text("subject line", subject, MAX_SUBJECT_LENGTH)
    per_style = latents_per_style(subjects, settings)
    if per_style < 2:
        raise ValueError(f"This gives {per_style} training latent per style; every style needs at least 2. Add "
                         "subjects, images per prompt or trajectory points.")


def latents_per_style(subjects: Sequence[str], settings: GenerationSettings) -> int:
    return len(subjects) * settings.images_per_prompt * len(kept_steps(settings.steps, settings.trajectory_points))


def encode_prompt(clip, text: str):
    """CONDITIONING for `text`, as CLIPTextEncode makes it."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def denoised_trajectory(model, positive, negative, settings: GenerationSettings, seed: int,
                        steps_to_keep: Sequence[int], advance: Progress) -> Tensor:
    """Sample one batch and return the model's denoised predictions at `steps_to_keep`, in LATENT
    space: `[len(steps_to_keep) * images_per_prompt, C, h, w]`."""
    empty = torch.zeros([settings.images_per_prompt, EMPTY_LATENT_CHANNELS, settings.height // 8, settings.width // 8])
    latent = comfy.sample.fix_empty_latent_channels(model, empty)
    noise = comfy.sample.prepare_noise(latent, seed)
    kept = []

    def keep_denoised(step, denoised, x, total_steps):
        if step in steps_to_keep:
            kept.append(denoised.to(comfy.model_management.intermediate_device(), torch.float32))
        advance(1)

    comfy.sample.sample(model, noise, settings.steps, settings.cfg, settings.sampler_name, settings.scheduler,
                        positive, negative, latent, callback=keep_denoised, disable_pbar=True, seed=seed)
    if not kept:
        raise ValueError(f"The sampler {settings.sampler_name} reported none of its steps; choose another sampler.")
    return model.get_model_object("latent_format").process_out(torch.cat(kept))


def generate_style_latents(model, clip, styles: Sequence[str], subjects: Sequence[str],
                           settings: GenerationSettings, advance: Progress) -> StyleLatents:
    """Draw `images_per_prompt` images of every "{subject} by {style}" (seed + prompt index) and keep
    their denoised predictions along the trajectory, labelled by style. `advance(1)` after every step."""
    check_generation_plan(styles, subjects, settings)
    channels = model.get_model_object("latent_format").latent_channels
    check_training_data_size(len(styles) * latents_per_style(subjects, settings), channels,
                             settings.height // 8, settings.width // 8)
    steps_to_keep = kept_steps(settings.steps, settings.trajectory_points)
    negative = encode_prompt(clip, "")
    prompts = [(label, f"{subject} by {style}") for label, style in enumerate(styles) for subject in subjects]
    latents, labels = [], []
    for index, (label, prompt) in enumerate(prompts):
        seed = (settings.seed + index) % MAX_SEED_COUNT
        trajectory = denoised_trajectory(model, encode_prompt(clip, prompt), negative, settings, seed,
                                         steps_to_keep, advance)
        latents.append(trajectory)
        labels += [label] * trajectory.shape[0]
    source = (f"prompts '{{subject}} by {{style}}': {len(subjects)} subjects x {settings.images_per_prompt} images, "
              f"{len(steps_to_keep)} trajectory points, {settings.steps} steps of {settings.sampler_name}")
    return StyleLatents(torch.cat(latents), torch.tensor(labels, dtype=torch.int64), tuple(styles), source,
                        trajectory_groups(len(prompts), len(steps_to_keep), settings.images_per_prompt))


def trajectory_groups(prompt_count: int, points: int, images_per_prompt: int) -> Tensor:
    """`[prompt_count * points * images_per_prompt]` trajectory index of every kept latent, in the order
    `denoised_trajectory` returns them (per prompt: point by point, each a batch of images)."""
    image = torch.arange(images_per_prompt).repeat(points)
    return torch.cat([prompt * images_per_prompt + image for prompt in range(prompt_count)])


class StyleLatentsFromPrompts:
    """Source (b): training data drawn by the user's own model, no image collection needed."""

    DESCRIPTION = ("Training data for Train Style Embedder drawn by your own model: for every style and subject it "
                   "samples images of '{subject} by {style}' and keeps the model's denoised prediction at several "
                   "steps of each image's trajectory. Note: points of one trajectory are alike, so the validation "
                   "accuracy reported by the trainer is optimistic with this source.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (STYLE_LATENTS,)
    RETURN_NAMES = ("style_latents",)
    OUTPUT_TOOLTIPS = ("Labelled latents for Train Style Embedder.",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model that draws the images (the one you will sample with)."}),
            "clip": ("CLIP", {"tooltip": "The text encoder for the prompts."}),
            "styles": ("STRING", {"multiline": True, "default": "Claude Monet\nKatsushika Hokusai\nVincent van Gogh",
                                  "tooltip": "One style (artist, movement, medium) per line; each is a class."}),
            "subjects": ("STRING", {"multiline": True,
                                    "default": "a lighthouse at dusk\na city street\na portrait of a woman\na bowl of fruit",
                                    "tooltip": "One subject per line; every subject is drawn in every style."}),
            "images_per_prompt": ("INT", {"default": 4, "min": 1, "max": 64,
                                          "tooltip": "Images drawn (as one batch) for every subject-style prompt."}),
            "trajectory_points": ("INT", {"default": 3, "min": 1, "max": 20,
                                          "tooltip": "Denoised predictions kept per image, evenly spaced over the second "
                                                     "half of the steps and ending at the final image."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 1000, "tooltip": "Denoising steps per image."}),
            "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance scale."}),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"tooltip": "Sampler used to draw the images."}),
            "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"tooltip": "Noise schedule."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED_COUNT - 1,
                             "tooltip": "Seed of the first prompt's noise; prompt i uses seed + i."}),
            "width": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 8, "tooltip": "Image width in pixels."}),
            "height": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 8, "tooltip": "Image height in pixels."}),
        }}

    def generate(self, model, clip, styles, subjects, **settings):
        require_finite_number("cfg", settings["cfg"])
        settings = GenerationSettings(**settings)
        style_names, subject_lines = prompt_lines(styles), prompt_lines(subjects)
        progress = comfy.utils.ProgressBar(len(style_names) * len(subject_lines) * settings.steps)
        return (generate_style_latents(model, clip, style_names, subject_lines, settings, progress.update),)


# --- training ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingOptions:
    """The trainer's options (see `embedders.train_style_classifier`)."""

    epochs: int = 30
    batch_size: int = 32
    validation_fraction: float = 0.2
    seed: int = 0


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Train on one CPU thread: the classifier's convolutions are too small to gain from more, and on a
    CPU shared with other work extra threads mostly wait on each other (on 2 busy cores, 8x8 latents:
    3.4 s for 10 epochs with 1 thread, 24 s with 2). A no-op on GPUs."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_latent_channels(data: StyleLatents, latent_format) -> None:
    channels, expected = data.latents.shape[1], latent_format.latent_channels
    if channels != expected:
        raise ValueError(f"The style latents have {channels} channels but the model makes {expected}-channel "
                         "latents; encode the images with this model's VAE (or draw them with this model).")


def check_batch_size(data: StyleLatents, batch_size: int) -> None:
    """Refuse a batch of more than `MAX_BATCH_LATENT_BYTES` of float32 latents."""
    latent_bytes = data.latents[0].numel() * FLOAT32_BYTES
    if min(batch_size, data.labels.numel()) * latent_bytes > MAX_BATCH_LATENT_BYTES:
        largest = MAX_BATCH_LATENT_BYTES // latent_bytes
        raise ValueError(f"batch_size {batch_size} is too large for latents of {tuple(data.latents.shape[1:])}: at "
                         f"most {largest} fit in this node's {MAX_BATCH_LATENT_BYTES // 2**20} MiB per batch.")


def train_for_model(model, data: StyleLatents, options: TrainingOptions,
                    on_epoch: EpochCallback | None = None) -> tuple[StyleClassifier, list[EpochReport]]:
    """Train a style classifier for `model`'s latents, noise levels and latent format.

    The latents are scaled into the sampler's space (`latent_format.process_in`) and the noise range is
    the model's own (`training_noise_range`). Latents from one trajectory stay on one side of the
    validation split. Training stops between batches when ComfyUI's Cancel is pressed, and ComfyUI's
    own interrupt exception is raised (nothing is saved).
    """
    require_finite_number("validation_fraction", options.validation_fraction)
    latent_format = model.get_model_object("latent_format")
    check_latent_channels(data, latent_format)
    check_batch_size(data, options.batch_size)
    sigma_min, sigma_max = training_noise_range(model.get_model_object("model_sampling"))
    device = comfy.model_management.get_torch_device()
    latents = latent_format.process_in(data.latents.to(device))
    with one_cpu_thread(latents.device):
        try:
            classifier, history = train_style_classifier(
                latents, data.labels.to(device), data.class_names, sigma_min=sigma_min, sigma_max=sigma_max,
                epochs=options.epochs, batch_size=options.batch_size,
                validation_fraction=options.validation_fraction, seed=options.seed,
                on_epoch=on_epoch, should_stop=comfy.model_management.processing_interrupted, groups=data.groups)
        except TrainingInterrupted:
            comfy.model_management.throw_exception_if_processing_interrupted()
            raise
    classifier.metadata.update({
        "latent_format": latent_format_name(latent_format),
        "data_source": data.source,
        "training_latents": str(data.labels.numel()),
        "latent_size": "x".join(str(size) for size in data.latents.shape[2:]),
    })
    return classifier, history


def training_noise_range(model_sampling) -> tuple[float, float]:
    """The noise-to-signal range `[s_min, s_max]` a style classifier trains on for this model sampling.

    The model's own sigma range, as variance-exploding noise levels (what `x0 + s n` needs: the same for
    EPS and v models, `t / (1 - t)` for flow models), capped at `MAX_TRAINING_NOISE`: beyond it a
    unit-variance latent is all noise (a zero-terminal-SNR model reaches s = 4500), and training there
    teaches nothing.
    """
    lowest = noise_level(model_sampling, float(model_sampling.sigma_min)).noise_to_signal
    highest = noise_level(model_sampling, float(model_sampling.sigma_max)).noise_to_signal
    return lowest, min(highest, MAX_TRAINING_NOISE)


def style_embedder_file_name(file_name: str) -> str:
    """`file_name` (surrounding spaces dropped, ".safetensors" added if missing) once `require_safe_name`
    accepts it; ValueError naming the input otherwise."""
    stem = file_name.strip().removesuffix(".safetensors")
    return require_safe_name("file_name", stem, MAX_FILE_STEM_BYTES) + ".safetensors"


def style_embedder_path(file_name: str, overwrite: bool, folder: Path | None = None) -> Path:
    """Where to save the style embedder `file_name` (checked by `style_embedder_file_name`).

    `folder` defaults to ComfyUI's `models/style_embedders` (created if needed). Raises ValueError for
    an unusable name and FileExistsError when the file exists and `overwrite` is off (checked again,
    atomically, when the file is saved).
    """
    name = style_embedder_file_name(file_name)
    folder = folder or Path(folder_paths.get_folder_paths(STYLE_EMBEDDERS)[0])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if path.exists() and not overwrite:
        raise existing_file_error(name)
    return path


def epoch_line(epoch: int, epochs: int, train_accuracy: float, validation_accuracy: float, loss: float) -> str:
    return (f"epoch {epoch}/{epochs}: loss {loss:.4f}, train accuracy {percent(train_accuracy)}, "
            f"validation accuracy {percent(validation_accuracy)}")


class TrainStyleEmbedder:
    """Train, save and output a style embedder for the connected model."""

    DESCRIPTION = ("Trains a style classifier on the style latents (from a folder of images or drawn from prompts) "
                   "at noise levels across the model's whole sigma range, reports train and validation accuracy per "
                   "epoch, saves it to models/style_embedders/<file_name>.safetensors and outputs it as an EMBEDDER. "
                   "Cancel stops it between batches (nothing is saved).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("EMBEDDER", "STRING")
    RETURN_NAMES = ("embedder", "report")
    OUTPUT_TOOLTIPS = ("The trained style embedder; plug into any repulsion node's embedder input.",
                       "Accuracy per epoch and a summary of the saved file.")
    OUTPUT_NODE = True
    FUNCTION = "train"

    @classmethod
    def VALIDATE_INPUTS(cls, file_name):
        """Refuse an unusable file name when the prompt is queued, before anything runs (None: linked)."""
        if file_name is None:
            return True
        try:
            style_embedder_file_name(file_name)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model whose latents and noise levels the embedder is trained for."}),
            "style_latents": (STYLE_LATENTS, {"tooltip": "From Style Latents from Folder or from Prompts."}),
            "file_name": ("STRING", {"default": "my_styles",
                                     "tooltip": "Saved as models/style_embedders/<file_name>.safetensors. Letters, "
                                                "digits, '-', '_', '.' and spaces; not starting with a dot."}),
            "epochs": ("INT", {"default": 30, "min": 1, "max": 10000,
                               "tooltip": "Passes over the training latents (each with fresh noise)."}),
            "batch_size": ("INT", {"default": 32, "min": 1, "max": 4096, "tooltip": "Latents per training step."}),
            "validation_fraction": ("FLOAT", {"default": 0.2, "min": 0.05, "max": 0.5, "step": 0.05,
                                              "tooltip": "Share of every style held out to measure accuracy."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED_COUNT - 1,
                             "tooltip": "Fixes the split, the initial weights, the batches and the noise."}),
            "overwrite": ("BOOLEAN", {"default": False,
                                      "tooltip": "Replace an existing file of that name (off: stop with an error)."}),
        }, "optional": {"output": style_output_input()}}

    def train(self, model, style_latents, file_name, overwrite, output=STYLE_OUTPUTS[0], **options):
        options = TrainingOptions(**options)
        path = style_embedder_path(file_name, overwrite)
        progress = comfy.utils.ProgressBar(options.epochs)
        lines = [f"Training on {style_latents.labels.numel()} latents from {style_latents.source}."]

        def report_epoch(epoch, train_accuracy, validation_accuracy, loss):
            lines.append(epoch_line(epoch, options.epochs, train_accuracy, validation_accuracy, loss))
            LOG.info("Particle Repulsion style embedder %s: %s", path.name, lines[-1])
            progress.update(1)

        classifier, _ = train_for_model(model, style_latents, options, report_epoch)
        save_style_embedder(path, classifier, {}, overwrite=overwrite)
        recipe = StyleEmbedderRecipe(classifier, label=path.name, output=output)
        report = "\n".join([recipe.summary(), *lines, f"Saved as {path.name} in models/{STYLE_EMBEDDERS}."])
        return {"ui": {"text": [report]}, "result": (recipe, report)}
