"""The font embedder: a style classifier trained by the pack's own nodes on the letters model's outputs.

The thesis's method end to end through the pack's node classes, as a user's graph would run it: Style
Latents from Prompts draws "the letter X by <style>" for every style and letter with the letters model,
keeping the model's denoised predictions along each trajectory, and Train Style Embedder trains the
pack's style classifier on them (its defaults, but the epochs). `train.py` commits the file it saves;
the installer puts it into `models/style_embedders/`, where Load Style Embedder finds it.
"""
from __future__ import annotations

from pathlib import Path

import folder_paths
from graphs import widget_defaults

from particle_repulsion.embedders import load_style_embedder, save_style_embedder
from particle_repulsion.nodes.model_folders import STYLE_EMBEDDERS, register_model_folders
from particle_repulsion.nodes.style_training import StyleLatentsFromPrompts, TrainStyleEmbedder

from .glyphs import IMAGE_SIDE, LETTERS, caption
from .install import FONTS_EMBEDDER_MARK, MARK_KEY
from .pipeline import SAMPLING, Letters

TRAINING_NAME = "letters_font_embedder_training"
IMAGES_PER_PROMPT = 2
TRAJECTORY_POINTS = 3
EPOCHS = 30
SEED = 10_000


def train_font_embedder(model: Letters, destination: Path) -> str:
    """Train the font embedder through the pack's nodes and save it to `destination` (with the letters mark in
    its metadata, through the pack's own file functions); the trainer's report."""
    register_model_folders()
    settings = {key: SAMPLING[key] for key in ("steps", "cfg", "sampler_name", "scheduler")}
    style_latents = StyleLatentsFromPrompts().generate(
        model.model, model.clip, "\n".join(model.styles), "\n".join(caption(letter) for letter in LETTERS),
        images_per_prompt=IMAGES_PER_PROMPT, trajectory_points=TRAJECTORY_POINTS, seed=SEED, width=IMAGE_SIDE,
        height=IMAGE_SIDE, **settings)[0]
    trainer_widgets = widget_defaults(TrainStyleEmbedder.INPUT_TYPES())
    trainer_defaults = {name: trainer_widgets[name] for name in ("batch_size", "validation_fraction", "seed")}
    _, report = TrainStyleEmbedder().train(model.model, style_latents, TRAINING_NAME, overwrite=True, epochs=EPOCHS,
                                           **trainer_defaults)["result"]
    trained = Path(folder_paths.get_full_path_or_raise(STYLE_EMBEDDERS, f"{TRAINING_NAME}.safetensors"))
    save_style_embedder(destination, load_style_embedder(trained), {MARK_KEY: FONTS_EMBEDDER_MARK})
    trained.unlink()
    return report
