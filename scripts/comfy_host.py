"""Where the ComfyUI host lives, and in-process access to `comfy.*` on the CPU.

`use_comfyui_in_process()` puts the host's ComfyUI folder first on `sys.path` (CPU only), so `import comfy.sd` etc.
work in scripts and tests that run in the host virtualenv (`.host/venv/bin/python`). Standard library
only: `setup_host.py` reads these paths before the virtualenv exists.
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST_DIR = Path(os.environ.get("PARTICLE_REPULSION_HOST", REPO / ".host")).resolve()
COMFYUI_DIR = HOST_DIR / "ComfyUI"
VENV_DIR = HOST_DIR / "venv"
VENV_PYTHON = VENV_DIR / "bin" / "python"
PACK_LINK_NAME = "comfyui-particle-repulsion"
PACKAGE_NAME = "particle_repulsion"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright's own browser download fails on these machines


class HostMissing(RuntimeError):
    """The ComfyUI host has not been set up (run `make setup`)."""


def require_host() -> None:
    if not (COMFYUI_DIR / "main.py").is_file():
        raise HostMissing(f"No ComfyUI host at {COMFYUI_DIR}. Run `python3 scripts/setup_host.py` "
                          "(or `make setup`) first.")


def use_comfyui_in_process() -> None:
    """Make `comfy.*` importable here and pin it to the CPU (as the server's `--cpu` flag does).

    Call before the first `import comfy...`: `comfy.model_management` picks its device at import.
    """
    require_host()
    if str(COMFYUI_DIR) not in sys.path:
        sys.path.insert(0, str(COMFYUI_DIR))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True


def register_pack_namespace() -> None:
    """Make the pack's sub-packages importable as `particle_repulsion.*` without running its root
    `__init__.py` (which needs a running ComfyUI): `particle_repulsion.metrics`, `.kernels`, ..."""
    if PACKAGE_NAME in sys.modules:
        return
    package = types.ModuleType(PACKAGE_NAME)
    package.__path__ = [str(REPO)]
    sys.modules[PACKAGE_NAME] = package
