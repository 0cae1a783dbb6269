"""Train a style embedder from a folder of labelled images, outside the ComfyUI server.

The same steps as the Style Latents from Image Folder -> Train Style Embedder nodes: the images of
every style (one sub-folder per style) are encoded with the checkpoint's VAE, a style classifier is
trained on noisy latents across the checkpoint's sigma range, and the `.safetensors` file is written to
the host's `models/style_embedders/` (or `--output-dir`). Run it with the host's Python:

    .host/venv/bin/python scripts/train_style_embedder.py IMAGES --checkpoint my_sd15.safetensors --name my_styles
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_host  # noqa: E402

comfy_host.use_comfyui_in_process()
comfy_host.register_pack_namespace()

import comfy.sd  # noqa: E402
import folder_paths  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from particle_repulsion.embedders import save_style_embedder  # noqa: E402
from particle_repulsion.nodes.embedder_recipes import StyleEmbedderRecipe  # noqa: E402
from particle_repulsion.nodes.model_folders import register_model_folders  # noqa: E402
from particle_repulsion.nodes.style_training import (  # noqa: E402
    ImageFolder, TrainingOptions, encode_style_images, epoch_line, find_style_images, style_embedder_path,
    train_for_model,
)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, help="folder with one sub-folder of images per style")
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint file, or its name in the host's models/checkpoints")
    parser.add_argument("--name", required=True, help="file name of the style embedder (.safetensors added)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where to write it (default: the host's models/style_embedders)")
    parser.add_argument("--width", type=int, default=512, help="pixels the images are resized to (default 512)")
    parser.add_argument("--height", type=int, default=512, help="pixels the images are resized to (default 512)")
    defaults = TrainingOptions()
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--validation-fraction", type=float, default=defaults.validation_fraction)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file of that name")
    return parser.parse_args(argv)


def checkpoint_path(checkpoint: str) -> str:
    """A checkpoint given as a path, or as a name in ComfyUI's checkpoints folder."""
    if Path(checkpoint).is_file():
        return checkpoint
    return folder_paths.get_full_path_or_raise("checkpoints", checkpoint)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    register_model_folders()
    path = style_embedder_path(arguments.name, arguments.overwrite, arguments.output_dir)
    image_folder = ImageFolder.local(arguments.images)
    images_by_style = find_style_images(image_folder)
    image_count = sum(len(paths) for paths in images_by_style.values())
    print(f"{len(images_by_style)} styles, {image_count} images: {', '.join(images_by_style)}")
    model, _, vae, _ = comfy.sd.load_checkpoint_guess_config(checkpoint_path(arguments.checkpoint),
                                                             output_vae=True, output_clip=False)
    options = TrainingOptions(arguments.epochs, arguments.batch_size, arguments.validation_fraction, arguments.seed)

    def report_epoch(epoch: int, train_accuracy: float, validation_accuracy: float, loss: float) -> None:
        print(epoch_line(epoch, options.epochs, train_accuracy, validation_accuracy, loss))

    with torch.inference_mode(), tqdm(total=image_count, unit="image", desc="encoding") as progress:
        data = encode_style_images(vae, images_by_style, arguments.width, arguments.height, progress.update,
                                   f"image folder {image_folder.path.name}")
    classifier, _ = train_for_model(model, data, options, report_epoch)
    save_style_embedder(path, classifier, {}, overwrite=arguments.overwrite)
    print(StyleEmbedderRecipe(classifier, label=path.name).summary())
    print(f"Saved to {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as error:  # unusable images, names or files: the message says why
        sys.exit(f"error: {error}")
