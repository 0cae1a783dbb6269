"""Compatibility: what changed in newer ComfyUI, checked on whichever host runs the suite (in-process, with
ComfyUI's own node classes: the running stock KSampler is the reference), and the versions the README and
the registry metadata claim, checked against the compatibility matrix that the tests run.
"""
import re
import tomllib

import pytest
import torch

from conftest import REPO

SEED, STEPS, CFG = 3, 2, 4.0
README = REPO / "README.md"
VERSION = re.compile(r"\b\d+\.\d+\.\d+\b")
TEXT_WIDTH, TEXT_TOKENS = 768, 8


def conditioning(seed: int) -> list:
    """A CONDITIONING list as CLIPTextEncode returns it: CLIP-L-wide tokens and pooled vector, deterministic."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, TEXT_TOKENS, TEXT_WIDTH, generator=generator)
    return [[tokens, {"pooled_output": torch.randn(1, TEXT_WIDTH, generator=generator)}]]


@pytest.fixture(scope="module")
def tiny_flux2(comfy):
    """The tiny Flux 2 (latent format with 128 channels and a spatial downscale ratio of 16)."""
    import tiny_transformers

    return tiny_transformers.load(tiny_transformers.FLUX2)


def test_repulsive_ksampler_at_strength_zero_is_the_stock_ksampler_on_a_ratio_16_model(tiny_flux2):
    """Flux 2 with EmptyLatentImage: whatever the running stock KSampler makes of the latent (newer ComfyUI
    resizes it to the model's downscale ratio and drops the ratio from its output), ours does the same."""
    import nodes

    from particle_repulsion.nodes.sampler_nodes import RepulsiveKSampler, repulsion_defaults

    assert tiny_flux2.get_model_object("latent_format").latent_channels == 128
    shared = {"seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "simple",
              "positive": conditioning(1), "negative": conditioning(2), "denoise": 1.0}
    with torch.inference_mode():
        (empty,) = nodes.EmptyLatentImage().generate(64, 64, 2)
        (stock,) = nodes.KSampler().sample(tiny_flux2, latent_image=dict(empty), **shared)
        (ours,) = RepulsiveKSampler().sample(tiny_flux2, latent_image=dict(empty), **shared,
                                             **{**repulsion_defaults(), "strength": 0.0})
    assert stock["samples"].shape[:2] == (2, 128)
    assert set(ours) == set(stock)
    assert torch.equal(ours["samples"], stock["samples"])


def test_tiny_flux_builds_and_runs_on_this_comfyui(comfy):
    import tiny_models

    model = tiny_models.load_tiny_flux()
    network = model.model.diffusion_model
    assert set(network.state_dict()) == set(tiny_models.flux_layout(tiny_models.TINY_FLUX_DIT))
    with torch.inference_mode():
        x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
        denoised = model.model.apply_model(x, torch.tensor([1.0]), c_crossattn=conditioning(1)[0][0],
                                           y=torch.zeros(1, TEXT_WIDTH), guidance=torch.tensor([3.5]))
    assert denoised.shape == x.shape and torch.isfinite(denoised).all()


def matrix_pins() -> dict:
    return tomllib.loads((REPO / "scripts" / "host_pins.toml").read_text())


def tested_comfyui_versions() -> set[str]:
    pins = matrix_pins()
    return {pins["comfyui"]["version"], *(entry["version"] for entry in pins["matrix"])}


def tested_frontend_versions() -> set[str]:
    pins = matrix_pins()
    default = next(pin.split("==")[1] for pin in pins["venv"]["comfyui"] if pin.startswith("comfyui-frontend-package=="))
    return {default, *(entry["frontend"] for entry in pins["matrix"])}


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    return text[start:text.index("\n## ", start + 1)]


def test_the_readme_compatibility_section_names_exactly_the_tested_versions():
    named = set(VERSION.findall(readme_section("Compatibility")))
    assert named == tested_comfyui_versions() | tested_frontend_versions()


def test_every_comfyui_version_the_readme_names_is_tested():
    assert set(re.findall(r"ComfyUI (\d+\.\d+(?:\.\d+)?)", README.read_text())) <= tested_comfyui_versions()


def test_the_registry_is_asked_for_the_oldest_tested_comfyui_or_newer():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    oldest = min(tested_comfyui_versions(), key=lambda version: tuple(map(int, version.split("."))))
    assert pyproject["tool"]["comfy"]["requires-comfyui"] == f">={oldest}"
