"""Model folders the pack adds to ComfyUI's `folder_paths` registry."""
import os

import folder_paths

STYLE_EMBEDDERS = "style_embedders"
STYLE_EMBEDDER_EXTENSIONS = {".safetensors"}


def register_model_folders() -> None:
    """Register `models/style_embedders/` so loaders list its files the ComfyUI way (idempotent)."""
    folder = os.path.join(folder_paths.models_dir, STYLE_EMBEDDERS)
    folder_paths.add_model_folder_path(STYLE_EMBEDDERS, folder)
    paths, extensions = folder_paths.folder_names_and_paths[STYLE_EMBEDDERS]
    folder_paths.folder_names_and_paths[STYLE_EMBEDDERS] = (paths, set(extensions) | STYLE_EMBEDDER_EXTENSIONS)
