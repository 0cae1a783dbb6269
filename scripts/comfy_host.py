"""Where the ComfyUI host lives, and in-process access to `comfy.*` on the CPU.

A host is a folder holding `ComfyUI/` and `venv/`. The default one, `.host/`, runs the whole suite; extra
hosts built from other ComfyUI sources live in `.hosts/<name>/` (see setup_host.py). The selected host is
the one named by PARTICLE_REPULSION_HOST, else the one whose virtualenv runs this Python, else `.host/`:
`.hosts/comfyui-0.12.1/venv/bin/python -m pytest tests/test_host.py` tests ComfyUI 0.12.1.

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
DEFAULT_HOST_DIR = REPO / ".host"
EXTRA_HOSTS_DIR = REPO / ".hosts"
HOST_ENVIRONMENT_VARIABLE = "PARTICLE_REPULSION_HOST"


def comfyui_dir(host_dir: Path) -> Path:
    return host_dir / "ComfyUI"


def venv_dir(host_dir: Path) -> Path:
    return host_dir / "venv"


def venv_python(host_dir: Path) -> Path:
    return venv_dir(host_dir) / "bin" / "python"


def selected_host_dir() -> Path:
    """PARTICLE_REPULSION_HOST if set; else the host whose virtualenv runs this Python; else `.host/`."""
    configured = os.environ.get(HOST_ENVIRONMENT_VARIABLE)
    if configured:
        return Path(configured).resolve()
    running_venv = Path(sys.prefix)
    if sys.prefix != sys.base_prefix and (comfyui_dir(running_venv.parent) / "main.py").is_file():
        return running_venv.parent.resolve()
    return DEFAULT_HOST_DIR


HOST_DIR = selected_host_dir()
COMFYUI_DIR = comfyui_dir(HOST_DIR)
VENV_DIR = venv_dir(HOST_DIR)
VENV_PYTHON = venv_python(HOST_DIR)
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
