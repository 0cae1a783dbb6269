"""ComfyUI's own web UI in Debian's Chromium (Playwright), for the browser tests and the workflow screenshots.

The frontend converts and queues workflows itself (`app.loadGraphData`, `app.queuePrompt`), so what runs is
what a user's click would run.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import comfy_host

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]
FIRST_RUN_DONE = {"Comfy.TutorialCompleted": True}
VIEWPORT = {"width": 1600, "height": 1000}
APP_READY_TIMEOUT_MS = 120_000


@contextmanager
def opened_web_ui(server, viewport: dict = VIEWPORT) -> Iterator:
    """A Playwright page with the server's web UI loaded (no first-run Templates dialog over the canvas)."""
    from playwright.sync_api import sync_playwright

    server.post_json("/settings", FIRST_RUN_DONE)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=comfy_host.CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport=viewport)
            yield page
        finally:
            browser.close()


def load_app(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("() => window.app && window.app.graph", timeout=APP_READY_TIMEOUT_MS)


def open_workflow(page, workflow: dict) -> None:
    """Load a UI-format workflow onto the canvas and fit the view to its nodes."""
    page.evaluate("async (workflow) => { await window.app.loadGraphData(workflow); }", workflow)
    page.wait_for_timeout(500)  # let the canvas lay the nodes out before fitting the view to them
    page.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.Canvas.FitView'); }")
    page.wait_for_timeout(200)


def queue_from_the_ui(page) -> None:
    """Queue the canvas's workflow as the Queue button does."""
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
