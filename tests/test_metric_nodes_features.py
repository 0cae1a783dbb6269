"""The Diversity nodes' feature sources (nodes/feature_sources.py), without ComfyUI: a stand-in CLIP vision model
and the pack's own embedder recipes."""
import pytest
import torch

from particle_repulsion.embedders import build_embedder
from particle_repulsion.metrics import location_features, pixel_features, style_features
from particle_repulsion.nodes.embedder_recipes import BuiltinEmbedderRecipe
from particle_repulsion.nodes.feature_sources import (
    Batch,
    FeatureSpace,
    choose_feature_space,
    embedder_from_recipe,
    tokens_as_grid,
)

BATCH = 3
TOKEN_WIDTH = 5


class StandInClipVision:
    """Answers `encode_image` like ComfyUI's CLIP vision model: embeddings and 1 + 4 x 4 tokens per image."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.projection = torch.randn(3, 7, generator=generator)
        self.token_weights = torch.randn(17, 3, TOKEN_WIDTH, generator=generator)

    def encode_image(self, images: torch.Tensor) -> dict:
        colour = images.mean(dim=(1, 2))
        tokens = torch.einsum("nc,tcd->ntd", colour, self.token_weights)
        return {"image_embeds": colour @ self.projection, "penultimate_hidden_states": tokens}


@pytest.fixture
def images():
    return torch.rand(BATCH, 32, 24, 3, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def latents():
    return torch.randn(BATCH, 4, 8, 6, generator=torch.Generator().manual_seed(2))


def test_tokens_as_grid_drops_the_class_token_and_lays_patches_out_row_by_row():
    tokens = torch.randn(2, 1 + 16, TOKEN_WIDTH)
    grid = tokens_as_grid(tokens)
    assert grid.shape == (2, TOKEN_WIDTH, 4, 4)
    for row in range(4):
        for col in range(4):
            assert torch.equal(grid[:, :, row, col], tokens[:, 1 + 4 * row + col])
    without_class_token = torch.randn(2, 9, TOKEN_WIDTH)
    assert torch.equal(tokens_as_grid(without_class_token).flatten(2).transpose(1, 2), without_class_token)


@pytest.mark.parametrize(("has_images", "has_latents", "has_clip", "has_embedder", "expected"), [
    (True, True, True, True, "clip_vision"),
    (False, True, True, True, "embedder"),
    (True, True, False, True, "embedder"),
    (True, False, False, True, "pixels"),
    (True, True, False, False, "pixels"),
    (False, True, True, False, "latent"),
])
def test_auto_takes_the_most_meaningful_source_that_is_connected(images, latents, has_images, has_latents,
                                                                 has_clip, has_embedder, expected):
    batch = Batch("the batch", images if has_images else None, latents if has_latents else None)
    space = choose_feature_space("auto", "whole", batch, StandInClipVision() if has_clip else None,
                                 BuiltinEmbedderRecipe() if has_embedder else None)
    assert space.source == expected and space.chosen_automatically
    assert "chosen automatically" in space.describe()


@pytest.mark.parametrize(("source", "expected"), [("clip_vision", "no CLIP_VISION model is connected"),
                                                   ("embedder", "no EMBEDDER is connected")])
def test_choosing_a_source_whose_model_is_missing_says_which_node_to_add(images, source, expected):
    with pytest.raises(ValueError, match=expected):
        choose_feature_space(source, "whole", Batch("the batch", images), None, None)


def test_every_source_and_aspect_gives_the_features_it_describes(images, latents):
    clip, recipe = StandInClipVision(), BuiltinEmbedderRecipe("random_cnn", seed=5)
    batch = Batch("the batch", images, latents)
    embedder = build_embedder("random_cnn", 4, seed=5)
    clip_grid = tokens_as_grid(clip.encode_image(images)["penultimate_hidden_states"])
    expected = {
        ("clip_vision", "whole"): clip.encode_image(images)["image_embeds"],
        ("clip_vision", "location"): location_features(clip_grid, 8),
        ("clip_vision", "style"): style_features(clip_grid),
        ("embedder", "whole"): embedder(latents),
        ("embedder", "style"): style_features(embedder.feature_map(latents)),
        ("pixels", "whole"): pixel_features(images),
        ("pixels", "location"): location_features(images.movedim(-1, 1), 8),
        ("pixels", "style"): style_features(images.movedim(-1, 1)),
        ("latent", "whole"): latents.flatten(1),
        ("latent", "location"): location_features(latents, 8),
    }
    for (source, aspect), features in expected.items():
        space = choose_feature_space(source, aspect, batch, clip, recipe)
        assert torch.allclose(space.features(batch), features.float(), atol=1e-6), (source, aspect)
    assert expected[("pixels", "style")].shape == (BATCH, 6)  # 3 colour channels: 3 * 4 / 2 pairs


def test_a_missing_input_kind_names_the_set_and_what_to_connect(images, latents):
    space = FeatureSpace("pixels", "whole")
    with pytest.raises(ValueError, match="the reference set has no IMAGE connected"):
        space.features(Batch("the reference set", latents=latents))
    with pytest.raises(ValueError, match="batch B has no LATENT connected"):
        FeatureSpace("latent", "whole").features(Batch("batch B", images=images))


def test_pixel_and_latent_features_refuse_sets_of_different_sizes(images, latents):
    smaller = Batch("the reference set", images[:, :16], latents[:, :, :4])
    batch = Batch("the batch", images, latents)
    with pytest.raises(ValueError, match="the batch is 24x32 pixels and the reference set is 24x16"):
        FeatureSpace("pixels", "whole").check_comparable(batch, smaller)
    with pytest.raises(ValueError, match="6x8 latent pixels"):
        FeatureSpace("latent", "location").check_comparable(batch, smaller)
    FeatureSpace("clip_vision", "whole").check_comparable(batch, smaller)  # CLIP resizes: no size constraint


def test_batches_whose_images_and_latent_disagree_in_count_are_refused(images, latents):
    assert Batch.from_inputs("the batch", None, None) is None
    assert Batch.from_inputs("the batch", images, {"samples": latents}).size == BATCH
    with pytest.raises(ValueError, match=r"images \(3\) and the latent \(2\)"):
        Batch.from_inputs("the batch", images, {"samples": latents[:2]})


def test_an_embedder_that_needs_the_model_says_to_connect_it(latents):
    recipe = BuiltinEmbedderRecipe("latent_rgb")
    with pytest.raises(ValueError, match="optional `model` input"):
        embedder_from_recipe(recipe, latents, None)

    class LatentFormat:
        latent_rgb_factors = torch.randn(4, 3).tolist()
        latent_rgb_factors_bias = [0.0, 0.1, 0.2]

    assert embedder_from_recipe(recipe, latents, LatentFormat())(latents).shape[0] == BATCH
