"""Registry readiness: the registry's own tool (comfy-cli) validates pyproject.toml and packs the publish
archive offline, the archive holds what a user needs and nothing else, and ComfyUI loads it as a pack.

comfy-cli packs the git-tracked files minus `.comfyignore`, so it runs in a throwaway git repository
holding this checkout's tracked files as they are on disk (uncommitted edits included), never in the
checkout itself. Its home and telemetry are kept out of the user's (HOME in a temporary folder, DO_NOT_TRACK).
"""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from comfy_server import ComfyServer
from conftest import ARTIFACTS, REPO
from graphs import Graph

ARCHIVE_NAME = "node.zip"  # what `comfy node pack` writes
USER_FILES = {"__init__.py", "LICENSE", "README.md", "pyproject.toml", "requirements.txt"}
USER_FOLDERS = {"nodes", "kernels", "embedders", "metrics", "web", "workflows"}
PACKED_FOLDER_NAME = "packed-particle-repulsion"  # the archive unpacked into custom_nodes/ under this name


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    return [name for name in listed.decode().split("\0") if name and (REPO / name).is_file()]


def comfy_cli(arguments: list[str], folder: Path, home: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HOME": str(home), "DO_NOT_TRACK": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "comfy_cli", "--skip-prompt", *arguments], cwd=folder,
                          env=environment, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> tuple[Path, Path]:
    """A git repository with this checkout's tracked files as on disk, and a home folder for comfy-cli."""
    folder = tmp_path_factory.mktemp("checkout")
    for name in tracked_files():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, folder / name)
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run(["git", "add", "-A"], cwd=folder, check=True)
    return folder, tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def archive(checkout) -> Path:
    folder, home = checkout
    packed = comfy_cli(["node", "pack"], folder, home)
    assert packed.returncode == 0, packed.stdout + packed.stderr
    return folder / ARCHIVE_NAME


def archive_names(archive: Path) -> set[str]:
    with zipfile.ZipFile(archive) as opened:
        return {name for name in opened.namelist() if not name.endswith("/")}


def test_comfy_cli_validates_the_pyproject_without_warnings(checkout):
    validated = comfy_cli(["node", "validate"], *checkout)
    output = validated.stdout + validated.stderr
    assert validated.returncode == 0, output
    assert "All validation checks passed" in output
    assert "warning" not in output.lower() and "error" not in output.lower()


def test_the_archive_holds_what_a_user_needs_and_nothing_else(archive):
    names = archive_names(archive)
    top_level = {name.split("/")[0] for name in names}
    assert top_level == USER_FILES | USER_FOLDERS
    shipped = {name for name in tracked_files() if name.split("/")[0] in USER_FILES | USER_FOLDERS}
    assert names == shipped  # every file of the runtime folders, nothing left out by a broad pattern
    assert not [name for name in names if name.endswith((".pt", ".pth", ".ckpt", ".safetensors", ".jpg", ".png"))]


@pytest.fixture(scope="module")
def packed_pack_server(archive, tmp_path_factory, tiny_checkpoint, comfy):
    """A ComfyUI server of the same host that loads only the unpacked archive as its custom nodes."""
    custom_nodes = tmp_path_factory.mktemp("custom_nodes")
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(custom_nodes / PACKED_FOLDER_NAME)
    config = tmp_path_factory.mktemp("config") / "extra_model_paths.yaml"
    config.write_text(yaml.safe_dump({"packed": {"custom_nodes": str(custom_nodes)}}))
    arguments = ("--extra-model-paths-config", str(config), "--disable-all-custom-nodes",
                 "--whitelist-custom-nodes", PACKED_FOLDER_NAME)
    with ComfyServer(ARTIFACTS / "comfyui-server-packed-archive.log", arguments) as running:
        yield running


def test_comfyui_loads_the_archive_as_a_pack_and_samples_with_it(packed_pack_server, tiny_checkpoint):
    from particle_repulsion.nodes.registry import NODE_CLASS_MAPPINGS

    log = packed_pack_server.log_text()
    assert not [line for line in log.splitlines() if PACKED_FOLDER_NAME in line and "IMPORT FAILED" in line]
    assert set(NODE_CLASS_MAPPINGS) <= set(packed_pack_server.object_info())
    templates = packed_pack_server.get_json("/workflow_templates").get(PACKED_FOLDER_NAME, [])
    assert sorted(templates) == sorted(path.stem for path in (REPO / "workflows").glob("*.json"))
    graph = Graph(tiny_checkpoint, batch_size=2)
    saved = graph.save_latent(graph.repulsive_ksampler("packed", strength=0.3, steps=2))
    assert packed_pack_server.run(graph.nodes).latents(saved).shape[0] == 2
