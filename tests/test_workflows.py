"""Every shipped workflow opens in the real web UI without a missing node and runs on the real server.

The frontend itself converts each UI-format workflow to the API format (`app.graphToPrompt()`), so widget
order and the seed's control value are handled by ComfyUI's own code. Before execution the prompt is
adapted to this CPU-only machine: model files swapped for the tiny test models, images 64 px, 2 steps.
Text encoders with T5-XXL cannot be made tiny (ComfyUI fixes their size), so loaders of them are replaced
by the tiny checkpoint, whose CLIP-L conditioning the tiny Flux and SD3 models take. The letters model
trained in this repository is installed first, and its workflow runs on it as it is.

The test host has none of the real model files the workflows name. Newer frontends (1.58+) flag the
loaders of such files and show a notice over the canvas; the test checks that the frontend flags nothing
else, then dismisses that notice, so any other "missing" notice still fails the test.
"""
import json
import uuid
from pathlib import Path

import pytest

import comfy_host
from conftest import ARTIFACTS, REPO, STYLE_FILE_IN_WORKFLOWS
from web_ui import load_app, open_workflow, opened_web_ui, queue_from_the_ui

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
SCREENSHOTS = ARTIFACTS / "workflows"
PACK_MARKERS = ("particlerepulsion", "particle_repulsion", "particle-repulsion")
CPU_LIMITS = {"width": 64, "height": 64, "steps": 2}
TEXT_ENCODER_LOADERS = {"CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader", "QuadrupleCLIPLoader"}
CHECKPOINT_CLIP_OUTPUT = 1
PACK_SCRIPT_URL_PART = f"/extensions/{comfy_host.PACK_LINK_NAME}/"
INTERNAL_MODULE_NOTICE = "is an internal module, not part of the public API"
MISSING_MODELS_NOTICE_CLOSE = "[data-testid=error-overlay-dismiss]"  # frontend 1.58+: the issues notice


@pytest.fixture(scope="module")
def page(server, tiny_files, style_embedders_folder, letters_model):
    """The web UI, opened once every model file the tests provide is on the server (the frontend reads the
    file lists once, at load, and newer ones flag files they did not see)."""
    with opened_web_ui(server) as browser_page:
        browser_page.console_messages_seen = []
        browser_page.pack_scripts_loaded = []
        browser_page.on("console", lambda message: browser_page.console_messages_seen.append(
            f"{message.type}: {message.text}"))
        browser_page.on("pageerror", lambda error: browser_page.console_messages_seen.append(f"pageerror: {error}"))
        browser_page.on("response", lambda response: browser_page.pack_scripts_loaded.append(response.url)
                        if PACK_SCRIPT_URL_PART in response.url and response.ok else None)
        load_app(browser_page, server.url)
        browser_page.console_messages_at_load = list(browser_page.console_messages_seen)
        yield browser_page


def flagged_node_ids(page) -> set[str]:
    """Ids of the nodes the frontend marks as having errors right after loading (frontend 1.58+ does so for
    loaders whose model file the server lacks)."""
    return set(page.evaluate("() => window.app.graph._nodes.filter((node) => node.has_errors).map((node) => String(node.id))"))


def combo_options(input_spec) -> list | None:
    """The choices of a COMBO input in /object_info (old form `[[...], {}]`, new form `["COMBO", {"options": [...]}]`)."""
    if isinstance(input_spec[0], list):
        return input_spec[0]
    return input_spec[1].get("options") if input_spec[0] == "COMBO" and len(input_spec) > 1 else None


def nodes_naming_absent_files(prompt: dict, object_info: dict) -> set[str]:
    """Ids of the nodes whose COMBO value (a model file, in the shipped workflows) the server does not offer."""
    absent = set()
    for node_id, node in prompt.items():
        specs = {**object_info[node["class_type"]]["input"].get("required", {}),
                 **object_info[node["class_type"]]["input"].get("optional", {})}
        for name, value in node["inputs"].items():
            options = combo_options(specs[name]) if name in specs else None
            if options is not None and isinstance(value, str) and value not in options:
                absent.add(str(node_id))
    return absent


def dismiss_the_missing_models_notice(page) -> None:
    """Close the frontend's notice about absent model files (only shown by frontends that flag them)."""
    for close in page.locator(MISSING_MODELS_NOTICE_CLOSE).filter(visible=True).all():
        close.click()
    page.wait_for_timeout(200)


def unknown_node_types(page) -> list[str]:
    return page.evaluate("""() => window.app.graph._nodes
        .map((node) => node.type)
        .filter((type) => !(type in LiteGraph.registered_node_types))""")


def errors_naming_the_pack(messages: list[str]) -> list[str]:
    return [message for message in messages
            if message.startswith(("error", "pageerror")) and any(marker in message.lower() for marker in PACK_MARKERS)]


def adapted_for_cpu(prompt: dict, tiny: dict[str, str], present: set[str]) -> dict:
    """The API prompt with the tiny models in place of the files the host lacks (files in `present` stay),
    64 px latents and 2 steps (batch sizes untouched).

    A trained style embedder gets a file name of its own, so runs never collide with an existing file.
    """
    adapted = json.loads(json.dumps(prompt))
    replaced_encoders = {node_id for node_id, node in adapted.items()
                         if node["class_type"] in TEXT_ENCODER_LOADERS and not present >= set(model_files(node))}
    for node_id in replaced_encoders:
        adapted[node_id] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}}
    for node in adapted.values():
        inputs = node["inputs"]
        for name, value in inputs.items():
            if isinstance(value, list) and len(value) == 2 and value[0] in replaced_encoders:
                inputs[name] = [value[0], CHECKPOINT_CLIP_OUTPUT]
        if inputs.get("ckpt_name") not in present | {None}:
            inputs["ckpt_name"] = tiny["checkpoint"]
        if inputs.get("unet_name") not in present | {None}:
            inputs["unet_name"] = tiny["flux" if "flux" in inputs["unet_name"].lower() else "sd3"]
        if inputs.get("vae_name") not in present | {None}:
            inputs["vae_name"] = tiny["vae"]
        if node["class_type"] == "ParticleRepulsionTrainStyleEmbedder":
            inputs["file_name"] = f"test_workflow_{uuid.uuid4().hex[:8]}"
        for name, limit in CPU_LIMITS.items():
            if isinstance(inputs.get(name), int) and not isinstance(inputs[name], bool):
                inputs[name] = min(inputs[name], limit)
    return adapted


def model_files(node: dict) -> list[str]:
    """The model file names a loader node's inputs name (clip_name, clip_name1, ...)."""
    return [value for name, value in node["inputs"].items() if name.startswith("clip_name") and isinstance(value, str)]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[path.stem for path in WORKFLOWS])
def test_workflow_opens_in_the_web_ui_and_runs(path: Path, page, server, tiny_files, style_embedders_folder,
                                               letters_model):
    workflow = json.loads(path.read_text())
    page.console_messages_seen.clear()
    open_workflow(page, workflow)
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    flagged, naming_absent_files = flagged_node_ids(page), nodes_naming_absent_files(prompt, server.object_info())
    dismiss_the_missing_models_notice(page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{path.stem}.png"))
    assert unknown_node_types(page) == []
    assert flagged <= naming_absent_files
    assert page.get_by_text("missing", exact=False).filter(visible=True).count() == 0
    assert errors_naming_the_pack(page.console_messages_seen) == []

    assert {node["class_type"] for node in prompt.values()} >= {
        node["type"] for node in workflow["nodes"] if node["type"] not in ("Note", "MarkdownNote")}
    adapted = adapted_for_cpu(prompt, tiny_files, letters_model)
    named = {value for node in adapted.values() for value in node["inputs"].values() if isinstance(value, str)}
    if path.stem.startswith("letters"):
        assert named >= letters_model, "the letters workflow must run on the letters model itself"
    server.run(adapted, timeout=900)


def test_the_report_shows_on_the_node_after_a_run_from_the_web_ui(page, server, tiny_checkpoint):
    workflow = json.loads((REPO / "workflows" / "diversity_report.json").read_text())
    for node in workflow["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = tiny_checkpoint
        if node["type"] == "EmptyLatentImage":
            node["widgets_values"][:2] = [64, 64]
        if node["type"] in ("KSampler", "ParticleRepulsionKSampler"):
            node["widgets_values"][2] = 2  # steps
    open_workflow(page, workflow)
    queue_from_the_ui(page)
    report = page.wait_for_function("""() => {
        const node = window.app.graph._nodes.find((n) => n.type === "ParticleRepulsionDiversityCompare");
        const widget = node?.widgets?.find((w) => w.name === "report_text");
        return widget?.value || null;
    }""", timeout=300_000).json_value()
    page.screenshot(path=str(SCREENSHOTS / "diversity_report_after_run.png"))
    assert "Vendi" in report and "without" in report and "with" in report
    page.evaluate("""() => {
        const node = window.app.graph._nodes.find((n) => n.type === "ParticleRepulsionDiversityCompare");
        window.app.canvas.ds.scale = 1;  // text widgets are hidden at low zoom
        window.app.canvas.centerOnNode(node);
        window.app.canvas.setDirty(true, true);
    }""")
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENSHOTS / "diversity_report_text_on_the_node.png"))
    shown = page.locator("textarea").filter(visible=True).evaluate_all("(areas) => areas.map((area) => area.value)")
    assert report in shown


def test_the_pack_extension_loads_through_the_public_frontend_api_only(page):
    assert any(url.endswith("/report_text.js") for url in page.pack_scripts_loaded)
    assert [message for message in page.console_messages_at_load if INTERNAL_MODULE_NOTICE in message] == []


def test_the_pack_workflows_are_listed_as_templates(server):
    listed = server.get_json("/workflow_templates").get(comfy_host.PACK_LINK_NAME, [])
    assert sorted(listed) == sorted(path.stem for path in WORKFLOWS)
    assert WORKFLOWS, "the pack ships no workflows"
