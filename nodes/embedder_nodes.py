"""Nodes that produce an EMBEDDER: where a repulsion node measures similarity."""
from __future__ import annotations

from ..embedders import EMBEDDER_DESCRIPTIONS, EMBEDDER_NAMES
from .embedder_recipes import BuiltinEmbedderRecipe

CATEGORY = "particle_repulsion/embedders"


class RepulsionEmbedder:
    """Choose one of the pack's built-in embedders."""

    DESCRIPTION = "Chooses the space in which the images of a batch are compared and pushed apart.\n" + "\n".join(
        f"{name}: {description}" for name, description in EMBEDDER_DESCRIPTIONS.items())
    CATEGORY = CATEGORY
    RETURN_TYPES = ("EMBEDDER",)
    OUTPUT_TOOLTIPS = ("Plug into any repulsion node's embedder input.",)
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
