"""The shared input checks (nodes/validation.py) and the memory bounds of the style-training glue, in-process."""
import math

import pytest
import torch


@pytest.fixture(scope="module")
def validation(comfy):
    from particle_repulsion.nodes import validation

    return validation


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_non_finite_numbers_are_refused_naming_the_input(validation, value):
    with pytest.raises(ValueError, match="The input strength is"):
        validation.require_finite_number("strength", value)


@pytest.mark.parametrize("value", [True, "0.5", None])
def test_non_numbers_are_refused_naming_the_input(validation, value):
    with pytest.raises(ValueError, match="The input strength must be a number"):
        validation.require_finite_number("strength", value)


def test_finite_numbers_pass_as_floats(validation):
    assert validation.require_finite_number("strength", 3) == 3.0
    validation.require_finite_numbers({"start": 0.0, "end": 1.0})
    with pytest.raises(ValueError, match="The input end is nan"):
        validation.require_finite_numbers({"start": 0.0, "end": math.nan})


@pytest.mark.parametrize("name", ["my_styles", "Monet 1872-1890", "v1.2", "北斎", "Café", "a..b"])
def test_plain_names_in_any_script_are_accepted(validation, name):
    assert validation.name_problem(name, 128) is None


@pytest.mark.parametrize("name, problem", [
    ("", "empty"), ("a/b", "characters other than"), ("a\\b", "characters other than"),
    ("<b>", "characters other than"), ("x\0y", "characters other than"), ("tab\there", "characters other than"),
    ("\u202egnp.exe", "characters other than"), (".hidden", "starts with a dot"), (" x", "starts with a dot or a space"),
    ("x ", "ends with a space"), ("con", "reserved device name"), ("LPT1.backup", "reserved device name"),
    ("é" * 65, "longer than 128 bytes"),  # 65 characters, 130 bytes in UTF-8
])
def test_unsafe_names_are_refused_with_the_reason(validation, name, problem):
    assert problem in validation.name_problem(name, 128)


def test_refusals_quote_the_name_escaped_and_short(validation):
    with pytest.raises(ValueError) as refusal:
        validation.require_safe_name("file_name", "evil\n" + "x" * 500, 128)
    assert "The file_name 'evil\\nxxx" in str(refusal.value) and len(str(refusal.value)) < 250


def test_plain_text_refuses_control_and_direction_characters(validation):
    assert validation.require_plain_text("label_a", "with repulsion (0.3)", 100) == "with repulsion (0.3)"
    for text in ("two\nlines", "right\u202eleft", "nul\0"):
        with pytest.raises(ValueError, match="The label_a .* holds control or format characters"):
            validation.require_plain_text("label_a", text, 100)


def test_a_training_batch_over_the_memory_bound_is_refused_with_the_largest_that_fits(style_training):
    one_latent = torch.zeros(1, 16, 256, 256)  # 4 MiB
    data = style_training.StyleLatents(one_latent.expand(40, -1, -1, -1), torch.arange(40) % 2, ("a", "b"), "test")
    style_training.check_batch_size(data, 16)
    with pytest.raises(ValueError, match=r"batch_size 32 is too large for latents of \(16, 256, 256\): at most 16"):
        style_training.check_batch_size(data, 32)


def test_training_data_over_the_memory_bound_is_refused_before_encoding(style_training):
    style_training.check_training_data_size(2000, 4, 64, 64)  # 125 MiB
    with pytest.raises(ValueError, match="20000 training latents of 4x64x64 take 1250 MiB, over this node's 512 MiB"):
        style_training.check_training_data_size(20000, 4, 64, 64)


def test_a_chunk_of_images_for_the_vae_stays_within_the_pixel_budget(style_training):
    assert style_training.images_per_chunk(512, 512) == 8
    assert style_training.images_per_chunk(64, 64) == 512
    assert style_training.images_per_chunk(4096, 4096) == 1  # 16.8 megapixels: one image per VAE call


def test_a_failed_save_names_the_file_and_not_its_folder(comfy, tmp_path):
    from particle_repulsion.embedders import StyleClassifier, save_style_embedder

    (tmp_path / "not a folder").write_text("a file where the folder should be")
    classifier = StyleClassifier(4, ["ink", "oil"], sigma_min=0.03, sigma_max=14.6)
    with pytest.raises(OSError, match=r"Cannot write the style embedder x.safetensors \(Not a directory\)") as failure:
        save_style_embedder(tmp_path / "not a folder" / "x.safetensors", classifier, {"latent_format": "SD15"})
    assert str(tmp_path) not in str(failure.value)
