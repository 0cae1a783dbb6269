"""Nodes that produce an EMBEDDER: where a repulsion node measures similarity."""
from __future__ import annotations

import os

import folder_paths

from ..embedders import EMBEDDER_DESCRIPTIONS, EMBEDDER_NAMES, GramEmbedder, load_style_embedder
from .embedder_recipes import STYLE_OUTPUTS, BuiltinEmbedderRecipe, GramEmbedderRecipe, StyleEmbedderRecipe
from .model_folders import STYLE_EMBEDDERS, style_embedder_names

CATEGORY = "particle_repulsion/embedders"
EMBEDDER_OUTPUT_TOOLTIP = "Plug into any repulsion node's embedder input."


class RepulsionEmbedder:
    """Choose one of the pack's built-in embedders."""

    DESCRIPTION = "Chooses the space in which the images of a batch are compared and pushed apart.\n" + "\n".join(
        f"{name}: {description}" for name, description in EMBEDDER_DESCRIPTIONS.items())
    CATEGORY = CATEGORY
    RETURN_TYPES = ("EMBEDDER",)
    OUTPUT_TOOLTIPS = (EMBEDDER_OUTPUT_TOOLTIP,)
    FUNCTION = "choose"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "embedder": (list(EMBEDDER_NAMES), {"default": "latent",
                                                "tooltip": "What the repulsion makes diverse (see the node's description)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffff,
                             "tooltip": "Seed of the random CNN's weights (fixed for the whole run). "
                                        "Other embedders ignore it."}),
            "grid_size": ("INT", {"default": 4, "min": 1, "max": 32,
                                  "tooltip": "Cells per side of the pooled grid of pooled_grid, random_cnn(_gram) and latent_rgb. "
                                             "Other embedders ignore it."}),
        }}

    def choose(self, embedder, seed, grid_size):
        return (BuiltinEmbedderRecipe(name=embedder, seed=seed, grid_size=grid_size),)


def style_output_input() -> tuple:
    """The `output` widget of the nodes that hand out a style embedder (optional: API prompts written
    before it existed still run)."""
    return (list(STYLE_OUTPUTS), {
        "default": STYLE_OUTPUTS[0],
        "tooltip": "class_probabilities: compare images by which style the classifier sees in them; use the "
                   "repulsion's collision objective (pushes each image out of the styles the others hold). "
                   "features: the classifier's 64 features (the thesis's choice), for kernel_sum or log_vendi."})


class LoadStyleEmbedder:
    """A trained style classifier from `models/style_embedders/` as the EMBEDDER.

    The file's metadata and tensor shapes are checked here; its latent channels are checked against
    the model's when sampling starts (the embedder may feed any sampler, so that is where the model is
    known), and a mismatch stops the prompt with a message naming both channel counts.
    """

    DESCRIPTION = ("Loads a style embedder (a style classifier trained with Train Style Embedder or the "
                   "pack's train_style_embedder script) from models/style_embedders. Repulsion then pushes "
                   "the images of the batch towards different styles. It must have been trained on latents "
                   "of the same kind as the sampling model's (checked when sampling starts).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("EMBEDDER", "STRING")
    RETURN_NAMES = ("embedder", "summary")
    OUTPUT_TOOLTIPS = (EMBEDDER_OUTPUT_TOOLTIP, "Its styles, latent kind, noise range and validation accuracy.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "style_embedder": (style_embedder_names(), {
                "tooltip": "A .safetensors file in models/style_embedders (names of letters, digits, '-', '_', "
                           "'.' and spaces)."}),
        }, "optional": {"output": style_output_input()}}

    @classmethod
    def IS_CHANGED(cls, style_embedder, **other_inputs):
        """Reload when the file is replaced (e.g. retrained under the same name)."""
        path = folder_paths.get_full_path(STYLE_EMBEDDERS, style_embedder)
        if path is None:
            return ""
        status = os.stat(path)
        return f"{status.st_mtime_ns}:{status.st_size}"

    def load(self, style_embedder, output=STYLE_OUTPUTS[0]):
        path = folder_paths.get_full_path_or_raise(STYLE_EMBEDDERS, style_embedder)
        recipe = StyleEmbedderRecipe(load_style_embedder(path), label=style_embedder, output=output)
        return (recipe, recipe.summary())


class GramStyleEmbedder:
    """EMBEDDER in, EMBEDDER out: compare which features occur together instead of where they are."""

    DESCRIPTION = (f"{GramEmbedder.description} Wraps any embedder (a style embedder, the random CNN, ...): "
                   "images are compared by the co-occurrence of the embedder's features, ignoring where "
                   "in the image they are.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("EMBEDDER",)
    OUTPUT_TOOLTIPS = (EMBEDDER_OUTPUT_TOOLTIP,)
    FUNCTION = "wrap"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"embedder": ("EMBEDDER", {"tooltip": "The embedder whose features are compared."})}}

    def wrap(self, embedder):
        return (GramEmbedderRecipe(embedder),)
