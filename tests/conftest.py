"""Shared pytest setup: the pack's import name, in-process ComfyUI, the tiny models and the server.

The repository is a ComfyUI custom-node package: its root `__init__.py` imports `comfy`, which only
exists inside a ComfyUI host. Pure tests import the pack's sub-packages under the stable name
`particle_repulsion` without executing that root `__init__.py`.
"""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import comfy_host  # noqa: E402

comfy_host.register_pack_namespace()


def artifacts_folder() -> Path:
    """tests/artifacts/ for the default host; a sub-folder per extra host, so runs on two hosts never mix."""
    artifacts = REPO / "tests" / "artifacts"
    return artifacts if comfy_host.HOST_DIR == comfy_host.DEFAULT_HOST_DIR else artifacts / comfy_host.HOST_DIR.name


ARTIFACTS = artifacts_folder()
STYLE_FILE_IN_WORKFLOWS = "my_styles.safetensors"  # what the shipped style workflow loads

# Markers that select what the compatibility matrix runs on its extra hosts (scripts/host_pins.toml):
# a test is `host` when it uses ComfyUI (its fixtures reach `comfy`), `browser` when it drives the web UI.
MARKER_FIXTURES = {"host": "comfy", "browser": "page"}


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m deselection reads the marks
def pytest_collection_modifyitems(items):
    for item in items:
        for marker, fixture in MARKER_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


@pytest.fixture(scope="session")
def comfy():
    """In-process access to `comfy.*` on the CPU (the host must be set up)."""
    comfy_host.use_comfyui_in_process()
    import comfy.samplers

    return sys.modules["comfy"]


@pytest.fixture(scope="session")
def tiny_checkpoint(comfy) -> str:
    """File name (for CheckpointLoaderSimple) of the tiny SD1.5-architecture checkpoint."""
    import tiny_models

    return tiny_models.ensure(tiny_models.TINY_SD15).name


@pytest.fixture(scope="session")
def server(tiny_checkpoint):
    """One real ComfyUI server for the whole session, with this pack loaded; always shut down."""
    from comfy_server import ComfyServer

    with ComfyServer(ARTIFACTS / "comfyui-server.log") as running:
        yield running


@pytest.fixture(scope="session")
def style_training(comfy):
    """The style-training glue (`nodes/style_training.py`), with the style_embedders folder registered."""
    from particle_repulsion.nodes import style_training
    from particle_repulsion.nodes.model_folders import register_model_folders

    register_model_folders()
    return style_training


@pytest.fixture(scope="session")
def letters_model(comfy) -> set[str]:
    """The letters model trained in this repository (benchmarks/letters/), installed into the host's model
    folders; the names of its files."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from letters import install as letters_install

    return {path.name for path in letters_install.install().values()}


@pytest.fixture(scope="module")
def tiny_files(tiny_checkpoint) -> dict[str, str]:
    """File names of the tiny models that replace the real ones in the web UI tests' workflows."""
    import tiny_models

    return {"checkpoint": tiny_checkpoint, "sd3": tiny_models.ensure(tiny_models.TINY_SD3).name,
            "flux": tiny_models.ensure(tiny_models.SHALLOW_FLUX).name,
            "vae": tiny_models.ensure(tiny_models.TINY_VAE16).name}


@pytest.fixture(scope="module")
def style_embedders_folder(comfy):
    """models/style_embedders/ with the file the style workflow loads; files made by the tests are removed."""
    from particle_repulsion.embedders import StyleClassifier, save_style_embedder

    folder = comfy_host.COMFYUI_DIR / "models" / "style_embedders"
    folder.mkdir(parents=True, exist_ok=True)
    provided = folder / STYLE_FILE_IN_WORKFLOWS
    created = not provided.exists()
    if created:
        classifier = StyleClassifier(4, ["ink", "oil"], sigma_min=0.03, sigma_max=14.6)
        save_style_embedder(provided, classifier, {"latent_format": "SD15"})
    before = set(folder.iterdir())
    yield folder
    for leftover in set(folder.iterdir()) - before:
        leftover.unlink()
    if created:
        provided.unlink()
