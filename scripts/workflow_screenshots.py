"""The README's workflow screenshots: shipped workflows queued from the real web UI, on the letters model.

The letters model trained in this repository (benchmarks/letters/) is installed into the host's model
folders, a real ComfyUI server starts, and each workflow below is opened and queued from the web UI exactly
as shipped; once every preview node shows its images, the canvas is saved to `docs/images/<workflow>.jpg`.
Run it with ComfyUI's Python: `.host/venv/bin/python scripts/workflow_screenshots.py` (about a minute).
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import comfy_host  # noqa: E402
from web_ui import load_app, open_workflow, opened_web_ui, queue_from_the_ui  # noqa: E402

WORKFLOWS = ("letters_font_diversity",)
IMAGES = comfy_host.REPO / "docs" / "images"
SERVER_LOG = comfy_host.REPO / "output" / "screenshots" / "comfyui-server.log"
# Large enough that the fitted canvas draws the nodes' text (frontends hide it below about 60% zoom).
VIEWPORT = {"width": 2600, "height": 1700}
MARGIN_PX = 24
RUN_TIMEOUT_MS = 600_000
JPEG_QUALITY = 85
GRAPH_BOUNDS_ON_SCREEN = """() => {
    const canvas = window.app.canvas, scale = canvas.ds.scale, [offsetX, offsetY] = canvas.ds.offset;
    const box = canvas.canvas.getBoundingClientRect();
    const nodes = window.app.graph._nodes;
    const left = Math.min(...nodes.map((node) => node.pos[0]));
    const top = Math.min(...nodes.map((node) => node.pos[1] - LiteGraph.NODE_TITLE_HEIGHT));
    const right = Math.max(...nodes.map((node) => node.pos[0] + node.size[0]));
    const bottom = Math.max(...nodes.map((node) => node.pos[1] + node.size[1]));
    return [box.left + (left + offsetX) * scale, box.top + (top + offsetY) * scale,
            box.left + (right + offsetX) * scale, box.top + (bottom + offsetY) * scale];
}"""
PREVIEWS_SHOWN = """() => {
    const previews = window.app.graph._nodes.filter((node) => node.type === "PreviewImage");
    return previews.length > 0 && previews.every((node) => node.imgs?.length > 0);
}"""


def save_graph_as_jpeg(page, path: Path) -> None:
    """The part of the page that shows the graph (no menus, panels or banners), as a JPEG."""
    left, top, right, bottom = page.evaluate(GRAPH_BOUNDS_ON_SCREEN)
    clip = {"x": max(left - MARGIN_PX, 0), "y": max(top - MARGIN_PX, 0)}
    clip.update(width=min(right + MARGIN_PX, VIEWPORT["width"]) - clip["x"],
                height=min(bottom + MARGIN_PX, VIEWPORT["height"]) - clip["y"])
    png = page.screenshot(clip=clip)
    Image.open(io.BytesIO(png)).convert("RGB").save(path, quality=JPEG_QUALITY, optimize=True)


def screenshot_after_run(page, workflow_name: str) -> Path:
    """Open and queue one shipped workflow, wait for its previews, save the canvas; the picture's path."""
    open_workflow(page, json.loads((comfy_host.REPO / "workflows" / f"{workflow_name}.json").read_text()))
    queue_from_the_ui(page)
    page.wait_for_function(PREVIEWS_SHOWN, timeout=RUN_TIMEOUT_MS)
    page.wait_for_timeout(500)  # the canvas draws the images on its next frame
    path = IMAGES / f"{workflow_name}.jpg"
    save_graph_as_jpeg(page, path)
    return path


def main() -> None:
    comfy_host.require_host()
    from comfy_server import ComfyServer
    from letters import install as letters_install

    letters_install.install()
    SERVER_LOG.parent.mkdir(parents=True, exist_ok=True)
    with ComfyServer(SERVER_LOG) as server, opened_web_ui(server, VIEWPORT) as page:
        load_app(page, server.url)
        for workflow_name in WORKFLOWS:
            print(screenshot_after_run(page, workflow_name).relative_to(comfy_host.REPO), flush=True)


if __name__ == "__main__":
    main()
