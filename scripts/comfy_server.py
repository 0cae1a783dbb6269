"""A real ComfyUI server for tests: start it, submit API-format prompts, collect what they produced.

The server is upstream ComfyUI from the host (scripts/setup_host.py), started with `--cpu` on a free
loopback port; it loads this pack through its own custom-node loader from `custom_nodes/`.
"""
from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

import comfy_host

STARTUP_TIMEOUT_SECONDS = 180
PACK_IMPORT_FAILURE_MARKERS = ("Cannot import", "IMPORT FAILED")


class PromptFailed(AssertionError):
    """ComfyUI rejected a prompt or its execution raised."""


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PromptResult:
    """What one executed prompt left behind: its history entry and the server's output folder."""

    history: dict
    output_dir: Path

    def node_output(self, node_id: str) -> dict:
        return self.history["outputs"].get(str(node_id), {})

    def images(self, node_id: str) -> list[np.ndarray]:
        """The images a SaveImage node wrote, as uint8 arrays [H, W, 3]."""
        return [np.asarray(Image.open(self._file(entry)).convert("RGB"))
                for entry in self.node_output(node_id).get("images", [])]

    def latents(self, node_id: str) -> torch.Tensor:
        """The `samples` a SaveLatent node wrote, [N, C, H, W] float32."""
        entries = self.node_output(node_id).get("latents", [])
        if len(entries) != 1:
            raise AssertionError(f"node {node_id} saved {len(entries)} latent files, expected 1")
        return load_file(self._file(entries[0]))["latent_tensor"].float()

    def ui_text(self, node_id: str) -> list[str]:
        return self.node_output(node_id).get("text", [])

    def _file(self, entry: dict) -> Path:
        return self.output_dir / entry.get("subfolder", "") / entry["filename"]


class ComfyServer:
    """One ComfyUI server process; use as a context manager so it is always shut down."""

    def __init__(self, log_path: Path, extra_arguments: tuple[str, ...] = ()):
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.output_dir = comfy_host.COMFYUI_DIR / "output"
        self.extra_arguments = extra_arguments
        self.process: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex

    def __enter__(self) -> "ComfyServer":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        comfy_host.require_host()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [str(comfy_host.VENV_PYTHON), "main.py", "--cpu", "--listen", "127.0.0.1",
                   "--port", str(self.port), "--disable-auto-launch", *self.extra_arguments]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=comfy_host.COMFYUI_DIR, stdout=log,
                                            stderr=subprocess.STDOUT)
        self._wait_until_ready()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pack_import_errors(self) -> list[str]:
        """Log lines in which ComfyUI reports that this pack failed to import."""
        return [line for line in self.log_text().splitlines()
                if comfy_host.PACK_LINK_NAME in line and any(m in line for m in PACK_IMPORT_FAILURE_MARKERS)]

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited during start-up (code {self.process.returncode}); "
                                   f"log tail:\n{self.log_text()[-3000:]}")
            try:
                self.get_json("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {STARTUP_TIMEOUT_SECONDS} s; "
                           f"log tail:\n{self.log_text()[-3000:]}")

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.load(response)

    def post_json(self, path: str, payload) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
                return json.loads(body) if body.strip() else {}
        except urllib.error.HTTPError as error:
            raise PromptFailed(f"POST {path} answered {error.code}: {error.read().decode()[:4000]}") from None

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def queue(self, prompt: dict) -> str:
        """Submit an API-format prompt; return its id (raises PromptFailed with node_errors if invalid)."""
        answer = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if answer.get("node_errors"):
            raise PromptFailed(f"prompt rejected: {json.dumps(answer['node_errors'])[:4000]}")
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """Poll /history until the prompt finished; return its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running a prompt; log tail:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")

    def run(self, prompt: dict, timeout: float = 600) -> PromptResult:
        """Queue `prompt`, wait for it, and raise PromptFailed unless it succeeded."""
        entry = self.wait(self.queue(prompt), timeout)
        if entry["status"].get("status_str") != "success":
            raise PromptFailed(f"execution failed: {execution_error(entry)}")
        return PromptResult(entry, self.output_dir)

    def run_expecting_error(self, prompt: dict, timeout: float = 600) -> str:
        """Queue `prompt` and return the execution error's message (fails if it succeeded)."""
        entry = self.wait(self.queue(prompt), timeout)
        if entry["status"].get("status_str") != "error":
            raise AssertionError("the prompt succeeded but an error was expected")
        return execution_error(entry)

    def interrupt(self) -> None:
        self.post_json("/interrupt", {})


def execution_error(entry: dict) -> str:
    """The exception message of a failed history entry ('' if none)."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('exception_type')}: {data.get('exception_message')}"
    return ""
