"""The ComfyUI glue of the style embedder, in-process: folder layout, image reading, file names, the
prompt plan, and the EMBEDDER recipes (channel check, latent-format warning, Gram wrapper, summary)."""
import logging
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

import comfy_host

from particle_repulsion.embedders import StyleClassifier, StyleEmbedderError, load_style_embedder, save_style_embedder

STYLE_EMBEDDERS_DIR = comfy_host.COMFYUI_DIR / "models" / "style_embedders"


@pytest.fixture(scope="module")
def recipes(comfy):
    from particle_repulsion.nodes import embedder_recipes

    return embedder_recipes


def write_images(folder, count, size=(12, 12)):
    folder.mkdir(parents=True)
    for index in range(count):
        Image.new("RGB", size, (index * 40, 0, 0)).save(folder / f"{index}.png")


def local_folder(style_training, path):
    return style_training.ImageFolder.local(path)


def test_style_images_are_found_per_sub_folder_in_sorted_order(style_training, tmp_path):
    write_images(tmp_path / "ukiyo-e", 3)
    write_images(tmp_path / "impressionism", 2)
    (tmp_path / "impressionism" / "notes.txt").write_text("not an image")
    found = style_training.find_style_images(local_folder(style_training, tmp_path))
    assert list(found) == ["impressionism", "ukiyo-e"]
    assert [image.path.name for image in found["impressionism"]] == ["0.png", "1.png"]
    assert found["impressionism"][0].name == f"{tmp_path.resolve()}/impressionism/0.png"


@pytest.mark.parametrize("counts, message", [
    ({"only": 4}, "Found 1 style sub-folder"),
    ({"many": 4, "single": 1}, r"too few in: single \(1\)"),
])
def test_unusable_folder_layouts_are_refused_with_the_expected_layout(style_training, tmp_path, counts, message):
    for style, count in counts.items():
        write_images(tmp_path / style, count)
    with pytest.raises(ValueError, match=message) as refusal:
        style_training.find_style_images(local_folder(style_training, tmp_path))
    assert "own sub-folder" in str(refusal.value)


def test_the_folder_node_offers_only_safe_sub_folders_of_the_input_folder(style_training, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path / "input"))
    for name in ("my styles", "<img src=x onerror=alert(1)>", ".hidden", "ok-2"):
        (tmp_path / "input" / name).mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "input" / "escape").symlink_to(tmp_path / "outside")
    (tmp_path / "input" / "inside").symlink_to(tmp_path / "input" / "ok-2")
    (tmp_path / "input" / "a file.png").write_bytes(b"")
    assert style_training.image_folder_choices() == ["inside", "my styles", "ok-2"]
    chosen = style_training.offered_image_folder("my styles")
    assert chosen.name == "input/my styles" and chosen.path == (tmp_path / "input" / "my styles").resolve()
    for refused in ("escape", "/etc", "../outside", "missing"):
        with pytest.raises(ValueError, match="not a sub-folder of ComfyUI's input folder"):
            style_training.offered_image_folder(refused)


def test_images_are_centre_cropped_to_the_target_aspect_then_resized(style_training, tmp_path):
    thirds = np.zeros((20, 60, 3), dtype=np.uint8)
    thirds[:, :20, 0], thirds[:, 20:40, 1], thirds[:, 40:, 2] = 255, 255, 255  # red | green | blue
    Image.fromarray(thirds).save(tmp_path / "wide.png")
    pixels = style_training.read_image(style_training.StyleImage(tmp_path / "wide.png", "wide.png"), 8, 8)
    assert pixels.shape == (8, 8, 3)
    torch.testing.assert_close(pixels, torch.tensor([0.0, 1.0, 0.0]).expand(8, 8, 3))


def test_an_unreadable_image_is_named_in_the_error(style_training, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="Cannot read the image styles/broken.png") as refusal:
        style_training.read_image(style_training.StyleImage(tmp_path / "broken.png", "styles/broken.png"), 8, 8)
    assert str(tmp_path) not in str(refusal.value)


def test_save_path_takes_a_plain_name_and_never_replaces_a_file_unasked(style_training, tmp_path):
    path = style_training.style_embedder_path(" watercolours ", overwrite=False, folder=tmp_path / "new")
    assert path == tmp_path / "new" / "watercolours.safetensors" and path.parent.is_dir()
    path.write_bytes(b"an earlier style embedder")
    with pytest.raises(FileExistsError, match="turn on overwrite"):
        style_training.style_embedder_path("watercolours.safetensors", overwrite=False, folder=path.parent)
    assert style_training.style_embedder_path("watercolours", overwrite=True, folder=path.parent) == path
    for name in ("../escape", "sub/name", "", ".hidden"):
        with pytest.raises(ValueError, match="The file_name .* cannot be used"):
            style_training.style_embedder_path(name, overwrite=True, folder=tmp_path)


@pytest.mark.parametrize("steps, points", [(1, 3), (2, 2), (3, 2), (20, 3), (20, 20), (7, 1)])
def test_kept_steps_cover_the_second_half_and_end_at_the_last_step(style_training, steps, points):
    kept = style_training.kept_steps(steps, points)
    assert kept[-1] == steps - 1
    assert all(steps // 2 <= step < steps for step in kept)
    assert len(kept) == min(points, steps - steps // 2) and kept == sorted(set(kept))


def generation(style_training, **changes):
    settings = dict(images_per_prompt=1, trajectory_points=1, steps=4, cfg=5.0, sampler_name="euler",
                    scheduler="normal", seed=0, width=64, height=64)
    return style_training.GenerationSettings(**{**settings, **changes})


@pytest.mark.parametrize("styles, subjects, changes, message", [
    (["monet"], ["a boat"], {"images_per_prompt": 2}, "at least two styles"),
    (["monet", "monet"], ["a boat"], {"images_per_prompt": 2}, "different from each other"),
    (["monet", "hokusai"], [], {"images_per_prompt": 2}, "at least one subject"),
    (["monet", "hokusai"], ["a boat"], {}, "gives 1 training latent per style"),
])
def test_impossible_generation_plans_are_refused_before_drawing(style_training, styles, subjects, changes, message):
    with pytest.raises(ValueError, match=message):
        style_training.check_generation_plan(styles, subjects, generation(style_training, **changes))


def test_prompt_lines_drop_blank_lines_and_padding(style_training):
    assert style_training.prompt_lines("  Monet \n\n\tHokusai\n  \n") == ["Monet", "Hokusai"]


def classifier(channels=4, latent_format="SD15"):
    torch.manual_seed(0)
    model = StyleClassifier(channels, ["ink", "oil", "pastel"], sigma_min=0.03, sigma_max=14.6,
                            metadata={"latent_format": latent_format, "validation_accuracy": "0.75",
                                      "clean_validation_accuracy": "0.8"})
    return model.eval().requires_grad_(False)


def test_style_recipe_refuses_a_model_with_other_latent_channels(recipes):
    recipe = recipes.StyleEmbedderRecipe(classifier(channels=16, latent_format="Flux"), "flux_styles.safetensors")
    with pytest.raises(StyleEmbedderError, match=r"flux_styles.safetensors was trained on 16-channel latents "
                                                 r"\(Flux\), but this model makes 4-channel latents"):
        recipe.build(4, None)


def test_style_recipe_builds_a_copy_and_warns_on_another_latent_format(recipes, caplog):
    import comfy.latent_formats

    trained = classifier()
    recipe = recipes.StyleEmbedderRecipe(trained, "sd15_styles.safetensors", output="features")
    with caplog.at_level(logging.WARNING, logger="particle_repulsion"):
        same_format = recipe.build(4, comfy.latent_formats.SD15())
        assert caplog.records == []
        recipe.build(4, comfy.latent_formats.SDXL())
    assert "trained on SD15 latents but the model's are SDXL" in caplog.text
    assert same_format is not trained
    latents = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(same_format(latents), trained(latents))


def test_style_recipe_offers_class_probabilities_by_default(recipes):
    trained = classifier()
    embedder = recipes.StyleEmbedderRecipe(trained, "sd15_styles.safetensors").build(4, None)
    latents = torch.randn(3, 4, 8, 8)
    probabilities = embedder(latents)
    torch.testing.assert_close(probabilities, torch.softmax(trained.classify(latents), dim=1))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="class_probabilities, features"):
        recipes.StyleEmbedderRecipe(trained, "x", output="logits")


def test_gram_recipe_wraps_any_recipe(recipes):
    style = recipes.StyleEmbedderRecipe(classifier(), "sd15_styles.safetensors")
    builtin = recipes.BuiltinEmbedderRecipe(name="random_cnn", seed=3)
    latents = torch.randn(2, 4, 16, 16)
    for inner in (style, builtin):
        gram = recipes.GramEmbedderRecipe(inner)
        embedder = gram.build(4, None)
        channels = embedder.inner.feature_map(latents).shape[1]
        assert gram.label == f"{inner.label} (Gram)"
        assert embedder(latents).shape == (2, channels * (channels + 1) // 2)


def test_summary_states_styles_latents_and_accuracy_against_chance(recipes):
    summary = recipes.StyleEmbedderRecipe(classifier(), "sd15_styles.safetensors").summary()
    assert summary.startswith("sd15_styles.safetensors: style classifier of 3 styles (ink, oil, pastel).")
    assert "4-channel SD15 latents" in summary
    assert "75.0% on noisy latents, 80.0% on clean ones (chance 33.3%)" in summary


def test_loader_node_reloads_a_replaced_file(comfy, style_training):
    from particle_repulsion.nodes.embedder_nodes import LoadStyleEmbedder

    name = f"pytest-{uuid.uuid4().hex[:8]}-replaced.safetensors"
    path = STYLE_EMBEDDERS_DIR / name
    STYLE_EMBEDDERS_DIR.mkdir(parents=True, exist_ok=True)
    try:
        save_style_embedder(path, classifier(), {})
        first = LoadStyleEmbedder.IS_CHANGED(name)
        save_style_embedder(path, classifier(channels=16), {})
        assert LoadStyleEmbedder.IS_CHANGED(name) != first
        recipe, summary = LoadStyleEmbedder().load(name)
        assert recipe.classifier.latent_channels == 16 and "16-channel" in summary
    finally:
        path.unlink(missing_ok=True)


def test_cli_trains_a_folder_of_images_into_a_style_embedder_file(comfy, tiny_checkpoint, tmp_path, capsys):
    import train_style_embedder

    for style in ("sketch", "poster"):
        write_images(tmp_path / "images" / style, 3, size=(32, 32))
    arguments = [str(tmp_path / "images"), "--checkpoint", tiny_checkpoint, "--name", "cli_styles",
                 "--output-dir", str(tmp_path / "out"), "--width", "32", "--height", "32", "--epochs", "2",
                 "--batch-size", "4"]
    assert train_style_embedder.main(arguments) == 0
    saved = tmp_path / "out" / "cli_styles.safetensors"
    loaded = load_style_embedder(saved, expected_channels=4)
    assert loaded.class_names == ("poster", "sketch")
    assert loaded.metadata["latent_format"] == "SD15" and loaded.metadata["training_latents"] == "6"
    printed = capsys.readouterr().out
    assert "epoch 2/2" in printed and f"Saved to {saved}" in printed
    assert loaded.metadata["data_source"] == "image folder images"
    with pytest.raises(FileExistsError, match="already exists"):
        train_style_embedder.main(arguments)
