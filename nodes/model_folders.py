"""Model folders the pack adds to ComfyUI's `folder_paths` registry, and what its loaders offer from them."""
import os
import re

import folder_paths

from .validation import name_problem

STYLE_EMBEDDERS = "style_embedders"
STYLE_EMBEDDER_EXTENSIONS = {".safetensors"}
MAX_LISTED_NAME_BYTES = 255  # per folder or file name, as file systems allow


def register_model_folders() -> None:
    """Register `models/style_embedders/` so loaders list its files the ComfyUI way (idempotent)."""
    folder = os.path.join(folder_paths.models_dir, STYLE_EMBEDDERS)
    folder_paths.add_model_folder_path(STYLE_EMBEDDERS, folder)
    paths, extensions = folder_paths.folder_names_and_paths[STYLE_EMBEDDERS]
    folder_paths.folder_names_and_paths[STYLE_EMBEDDERS] = (paths, set(extensions) | STYLE_EMBEDDER_EXTENSIONS)


def style_embedder_names() -> list[str]:
    """The style-embedder files Load Style Embedder offers: ComfyUI's list of the folder, less the names
    with a folder or file name `name_problem` refuses (the frontend's list shows names as HTML)."""
    return [name for name in folder_paths.get_filename_list(STYLE_EMBEDDERS) if is_listable(name)]


def is_listable(relative_name: str) -> bool:
    """True when every part of `relative_name` (a path relative to a model folder) is an acceptable name."""
    return all(name_problem(part, MAX_LISTED_NAME_BYTES) is None for part in re.split(r"[\\/]", relative_name))
