"""Where the letters model's files live, and their installation into a ComfyUI host's model folders.

Committed (written by `train.py`): the SD3 transformer, the TAESD-format VAE, the two judges, the styles
and training figures (JSON) and held-out renders for the judges' tests. Installed: the transformer into
`models/diffusion_models`, the VAE into `models/vae`, and the CLIP-L text encoder (built from the tiny
checkpoint's deterministic weights, 246 MB, never committed) into `models/text_encoders`.

    .host/venv/bin/python benchmarks/letters/install.py [COMFYUI_DIR]
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

if __name__ == "__main__":  # run as a script: make the letters package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import letters  # noqa: E402,F401  (puts ComfyUI and scripts/ on sys.path)
import comfy_host  # noqa: E402
from letters import conditioning  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

WEIGHTS = comfy_host.REPO / "benchmarks" / "weights" / "letters"
TRANSFORMER_FILE = WEIGHTS / "letters_sd3.safetensors"
VAE_FILE = WEIGHTS / "letters_vae.safetensors"
FONT_JUDGE_FILE = WEIGHTS / "font_judge.safetensors"
LETTER_JUDGE_FILE = WEIGHTS / "letter_judge.safetensors"
STYLES_FILE = WEIGHTS / "letters.json"
HELDOUT_FILE = WEIGHTS / "heldout_glyphs.npz"
FONTS_EMBEDDER_FILE = WEIGHTS / "font_embedder.safetensors"

UNET_NAME = "particle-repulsion-letters-sd3.safetensors"
VAE_NAME = "particle-repulsion-letters-vae.safetensors"
CLIP_NAME = "particle-repulsion-letters-clip-l.safetensors"
FONTS_EMBEDDER_NAME = "particle-repulsion-letters-fonts.safetensors"
MARK_KEY = "particle_repulsion.letters"  # safetensors metadata naming which letters file this is
TRANSFORMER_MARK, VAE_MARK, FONTS_EMBEDDER_MARK = "sd3 transformer", "taesd vae", "font embedder"
CLIP_MARK = "tiny checkpoint CLIP-L, factory v2"


@dataclass(frozen=True)
class InstalledFile:
    """One file the installer puts into `models/<folder>/<name>`: copied from `source` (which carries the
    metadata {MARK_KEY: mark}), or built by `build` (tensors, written with that metadata)."""

    folder: str
    name: str
    mark: str
    source: Path | None = None
    build: Callable[[], dict] | None = None


INSTALLED_FILES = (
    InstalledFile("diffusion_models", UNET_NAME, TRANSFORMER_MARK, source=TRANSFORMER_FILE),
    InstalledFile("vae", VAE_NAME, VAE_MARK, source=VAE_FILE),
    InstalledFile("text_encoders", CLIP_NAME, CLIP_MARK, build=conditioning.clip_l_state),
    InstalledFile("style_embedders", FONTS_EMBEDDER_NAME, FONTS_EMBEDDER_MARK, source=FONTS_EMBEDDER_FILE),
)
ALL_FOLDERS = tuple(item.folder for item in INSTALLED_FILES)
MODEL_FOLDERS = ("diffusion_models", "vae", "text_encoders")  # what sampling needs


class ForeignFile(FileExistsError):
    """A file of the same name that this installer did not write is in the way."""


def file_mark(path: Path) -> str | None:
    """The letters mark in a safetensors file's metadata (None for any other file)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get(MARK_KEY)
    except Exception:  # not a safetensors file: certainly not ours
        return None


def _up_to_date(item: InstalledFile, target: Path) -> bool:
    return item.source is None or target.read_bytes() == item.source.read_bytes()


def _write(item: InstalledFile, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    if item.source is not None:
        partial.write_bytes(item.source.read_bytes())
    else:
        save_file(item.build(), str(partial), metadata={MARK_KEY: item.mark})
    partial.replace(target)


def install(comfyui_dir: Path = comfy_host.COMFYUI_DIR, folders: tuple[str, ...] = ALL_FOLDERS) -> dict[str, Path]:
    """Put the letters model's files for `folders` into `comfyui_dir/models/...`; {folder: path}. Idempotent;
    an older letters file of the same kind is replaced; any other file of the same name raises ForeignFile
    and is left alone."""
    installed = {}
    for item in (item for item in INSTALLED_FILES if item.folder in folders):
        target = Path(comfyui_dir) / "models" / item.folder / item.name
        if target.exists() and file_mark(target) != item.mark:
            raise ForeignFile(f"{target} exists and is not the letters model's {item.mark}; move it away or "
                              "rename it, nothing was overwritten.")
        if not target.exists() or not _up_to_date(item, target):
            target.parent.mkdir(parents=True, exist_ok=True)
            _write(item, target)
        installed[item.folder] = target
    return installed


def main() -> int:
    comfyui_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else comfy_host.COMFYUI_DIR
    for folder, path in install(comfyui_dir).items():
        print(f"[letters] {folder}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
