"""What the hardening tests (tests/test_hardening_*.py) share: hostile prompts go to the real server, and
after each the server must still sample a good prompt.

Every file or folder the tests write carries `SESSION_TAG` and is removed by `remove_session_files`.
"""
from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import comfy_host
from comfy_server import PromptFailed
from graphs import CHECKPOINT, MODEL_OUTPUT, VAE_OUTPUT, Graph

SESSION_TAG = f"pytest-hardening-{uuid.uuid4().hex[:8]}"
INPUT_DIR = comfy_host.COMFYUI_DIR / "input"
STYLE_EMBEDDERS_DIR = comfy_host.COMFYUI_DIR / "models" / "style_embedders"
SERVER_PATHS = (str(comfy_host.COMFYUI_DIR), str(comfy_host.COMFYUI_DIR.resolve()))
STYLE_PIXELS = 32  # training images and latents stay tiny: 4x4 latents


def tagged(stem: str) -> str:
    """A file or folder name unique to this test session."""
    return f"{SESSION_TAG}-{stem}"


def remove_session_files() -> None:
    for path in [*INPUT_DIR.glob(f"{SESSION_TAG}-*"), *STYLE_EMBEDDERS_DIR.glob(f"*{SESSION_TAG}-*")]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def write_style_images(folder: Path, styles=("ink", "oil"), per_style: int = 3) -> None:
    """`per_style` random RGB images of STYLE_PIXELS in one sub-folder of `folder` per style."""
    generator = np.random.default_rng(0)
    for style in styles:
        (folder / style).mkdir(parents=True, exist_ok=True)
        for index in range(per_style):
            pixels = generator.integers(0, 256, (STYLE_PIXELS, STYLE_PIXELS, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / style / f"{index}.png")


def folder_graph(checkpoint: str, folder: str, file_name=None, **trainer_options) -> Graph:
    """A prompt encoding the input sub-folder `folder` ("images") with the tiny checkpoint's VAE and training
    on it ("train", see `add_trainer`; by default saved under a session file name)."""
    graph = Graph(checkpoint)
    graph.add("images", "ParticleRepulsionStyleLatentsFromFolder", vae=[CHECKPOINT, VAE_OUTPUT], folder=folder,
              width=STYLE_PIXELS, height=STYLE_PIXELS)
    add_trainer(graph, file_name or tagged("from-folder"), **trainer_options)
    return graph


def add_trainer(graph: Graph, file_name, epochs: int = 2, overwrite: bool = False, **options) -> str:
    """Train Style Embedder on the graph's "images" output; `file_name` may be a value or a link."""
    settings = {"epochs": epochs, "batch_size": 2, "validation_fraction": 0.3, "seed": 0, **options}
    return graph.add("train", "ParticleRepulsionTrainStyleEmbedder", model=[CHECKPOINT, MODEL_OUTPUT],
                     style_latents=["images", 0], file_name=file_name, overwrite=overwrite, **settings)


def rejected_prompt(server, prompt: dict) -> str:
    """The server's answer (with its node errors) to a prompt it refuses at validation, before running
    anything; fails if the prompt is accepted."""
    try:
        prompt_id = server.queue(prompt)
    except PromptFailed as refusal:
        return str(refusal)
    server.wait(prompt_id)
    raise AssertionError("the server accepted a prompt it should have refused")


def assert_no_server_path(text: str) -> None:
    """Nothing sent to the client may name where ComfyUI lives on the server."""
    assert not any(path in text for path in SERVER_PATHS), text


def assert_still_serves(server, checkpoint: str) -> None:
    """The server is alive and runs a good prompt: 1 step of the stock KSampler on a 2-image batch."""
    graph = Graph(checkpoint, batch_size=2, width=32, height=32, prompt=f"a harbour {time.monotonic()}")
    saved = graph.save_latent(graph.stock_ksampler("good", steps=1))
    latents = server.run(graph.nodes).latents(saved)
    assert latents.shape == (2, 4, 4, 4) and torch.isfinite(latents).all()
    assert server.process.poll() is None


def peak_memory_bytes(server) -> int:
    """The server process's peak resident memory so far (Linux's VmHWM), in bytes."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM line in /proc/<pid>/status")
