"""Particle Repulsion for ComfyUI: make the images of one batch genuinely different from each other.

ComfyUI imports this file at start-up. It only registers node classes and the `style_embedders` model
folder: no downloads, no installs, no model loading.
"""
from .nodes.model_folders import register_model_folders
from .nodes.registry import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

register_model_folders()

# Frontend extension: shows the Diversity nodes' text report on the node.
WEB_DIRECTORY = "./web/js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
