"""Unit tests of the embedders and their registry (pure torch, no ComfyUI)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from particle_repulsion.embedders import (
    EMBEDDER_DESCRIPTIONS,
    EMBEDDER_NAMES,
    MAX_GRAM_CHANNELS,
    ChannelMeanEmbedder,
    EdgesEmbedder,
    GramEmbedder,
    LatentEmbedder,
    LatentRGBEmbedder,
    PooledGridEmbedder,
    RandomCNNEmbedder,
    RuleOfThirdsEmbedder,
    build_embedder,
)
from particle_repulsion.embedders.layout import band_weights

CHANNEL_COUNTS = (4, 16)
SIZES = ((8, 8), (13, 9), (32, 32))


def random_latents(channels, height, width, batch=2, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, height, width, generator=generator, dtype=dtype)


def rgb_factors(channels, seed=1):
    return torch.randn(channels, 3, generator=torch.Generator().manual_seed(seed)).tolist()


def build(name, channels, **options):
    """`build_embedder` with preview factors that fit `channels`, so every name can be built."""
    return build_embedder(name, channels, latent_rgb_factors=rgb_factors(channels), **options)


def test_registry_lists_latent_first_and_describes_every_name():
    assert EMBEDDER_NAMES[0] == "latent"
    assert set(EMBEDDER_DESCRIPTIONS) == set(EMBEDDER_NAMES)
    assert all(description.strip() for description in EMBEDDER_DESCRIPTIONS.values())


@pytest.mark.parametrize("name", EMBEDDER_NAMES)
@pytest.mark.parametrize("channels", CHANNEL_COUNTS)
@pytest.mark.parametrize("size", SIZES)
def test_output_shape_matches_feature_size(name, channels, size):
    embedder = build(name, channels)
    latents = random_latents(channels, *size)
    features = embedder(latents)
    assert features.shape == (2, embedder.feature_size(channels, *size))
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert embedder.feature_map(latents).shape[:2] == (2, embedder.feature_map_channels(channels, *size))
    assert type(embedder).description.strip()


@pytest.mark.parametrize("inner", [ChannelMeanEmbedder(), RuleOfThirdsEmbedder(), EdgesEmbedder(), LatentEmbedder()])
def test_gram_of_every_kind_of_inner_embedder_matches_feature_size(inner):
    gram = GramEmbedder(inner)
    latents = random_latents(4, 13, 9)
    assert gram(latents).shape == (2, gram.feature_size(4, 13, 9))


GRADCHECK_EMBEDDERS = {
    **{name: (lambda name=name: build(name, 4, grid_size=2)) for name in EMBEDDER_NAMES},
    "channel_mean_gram": lambda: GramEmbedder(ChannelMeanEmbedder()),
    "latent_gram": lambda: GramEmbedder(LatentEmbedder()),
}


@pytest.mark.parametrize("name", GRADCHECK_EMBEDDERS)
def test_gradients_match_finite_differences_in_float64(name):
    embedder = GRADCHECK_EMBEDDERS[name]()
    latents = random_latents(4, 5, 4, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(embedder, (latents,), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("name", EMBEDDER_NAMES)
def test_embedder_built_under_inference_mode_still_backpropagates(name):
    with torch.inference_mode():
        embedder = build(name, 4)
    latents = random_latents(4, 8, 8).requires_grad_(True)
    embedder(latents).square().sum().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_weights_created_under_inference_mode_cannot_backpropagate():
    """Why `build_embedder` leaves inference mode: the same embedder built directly in it breaks autograd."""
    with torch.inference_mode():
        embedder = RandomCNNEmbedder(4)
    latents = random_latents(4, 8, 8).requires_grad_(True)
    with pytest.raises(RuntimeError, match="[Ii]nference tensor"):
        embedder(latents).sum().backward()


def test_half_precision_latents_give_float32_features():
    embedder = build("random_cnn", 4)
    features = embedder(random_latents(4, 8, 8).half())
    assert features.dtype == torch.float32


def test_random_cnn_is_fixed_for_a_seed_and_changes_with_it():
    latents = random_latents(4, 13, 9)
    first = build_embedder("random_cnn", 4, seed=7)
    rebuilt = build_embedder("random_cnn", 4, seed=7)
    other_seed = build_embedder("random_cnn", 4, seed=8)
    features = first(latents)
    assert torch.equal(features, first(latents))
    assert torch.equal(features, rebuilt(latents))
    assert not torch.allclose(features, other_seed(latents))


def test_random_cnn_weights_are_not_trainable():
    embedder = build_embedder("random_cnn", 4)
    assert list(embedder.parameters()) == []


@pytest.mark.parametrize("height, width", [(10, 13), (3, 3), (9, 30)])
def test_rule_of_thirds_follows_a_bright_blob_from_left_to_right_third(height, width):
    embedder = RuleOfThirdsEmbedder()
    left, right = torch.zeros(2, 1, 1, height, width).unbind(0)
    left[..., : width // 3] = 1
    right[..., width - width // 3:] = 1
    left_features, right_features = embedder(left)[0], embedder(right)[0]
    left_third, right_third, left_minus_right = 0, 2, 8
    assert left_features[left_third] > left_features[right_third]
    assert right_features[right_third] > right_features[left_third]
    assert left_features[left_minus_right] > 0 > right_features[left_minus_right]


def test_rule_of_thirds_band_means_use_fractional_boundaries():
    """At width 4 the left third is [0, 4/3): pixel 0 whole and a third of pixel 1."""
    latents = torch.tensor([3.0, 6.0, 0.0, 0.0]).reshape(1, 1, 1, 4).expand(1, 1, 5, 4)
    left_mean = RuleOfThirdsEmbedder()(latents)[0, 0]
    assert left_mean.item() == pytest.approx((3.0 + 6.0 / 3) / (4 / 3))


def test_rule_of_thirds_matches_plain_slices_when_the_size_divides_by_three():
    latents = random_latents(2, 6, 9, batch=1)
    features = RuleOfThirdsEmbedder()(latents).reshape(2, 12)
    column_means = torch.stack([latents[0, :, :, 3 * k:3 * k + 3].mean(dim=(1, 2)) for k in range(3)], dim=1)
    row_means = torch.stack([latents[0, :, 2 * k:2 * k + 2, :].mean(dim=(1, 2)) for k in range(3)], dim=1)
    torch.testing.assert_close(features[:, :3], column_means)
    torch.testing.assert_close(features[:, 3:6], row_means)
    torch.testing.assert_close(features[:, 6], column_means[:, 0] - column_means[:, 1])


@settings(max_examples=40, deadline=None)
@given(length=st.integers(1, 64), bands=st.integers(1, 5))
def test_band_weights_partition_every_pixel(length, bands):
    weights = band_weights(length, bands)
    assert weights.shape == (bands, length)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(bands, dtype=torch.float64))
    # each pixel's area is shared out completely: its weights times the band width sum to 1
    torch.testing.assert_close(weights.sum(dim=0) * length / bands, torch.ones(length, dtype=torch.float64))


@pytest.mark.parametrize("height, width", [(2, 2), (7, 5), (8, 8)])
def test_edges_see_which_half_is_brighter_and_ignore_flat_images(height, width):
    embedder = EdgesEmbedder()
    flat = torch.full((1, 3, height, width), 2.5)
    torch.testing.assert_close(embedder(flat), torch.zeros(1, 12))
    upper_right, upper_left = torch.zeros(2, 1, 1, height, width).unbind(0)
    upper_right[..., 0, width - 1] = 1
    upper_left[..., 0, 0] = 1
    left_right, top_bottom, upper_right_lower_left, _ = embedder(upper_right)[0]
    assert left_right < 0 and top_bottom > 0 and upper_right_lower_left > 0
    left_right, top_bottom, _, upper_left_lower_right = embedder(upper_left)[0]
    assert left_right > 0 and top_bottom > 0 and upper_left_lower_right > 0


def test_latent_rgb_is_the_linear_preview_averaged():
    factors = torch.tensor(rgb_factors(4))
    bias = [0.1, -0.2, 0.3]
    embedder = build_embedder("latent_rgb", 4, grid_size=1, latent_rgb_factors=factors, latent_rgb_bias=bias)
    latents = random_latents(4, 13, 9)
    expected = latents.mean(dim=(2, 3)) @ factors + torch.tensor(bias)
    torch.testing.assert_close(embedder(latents), expected)


def test_latent_rgb_keeps_a_private_copy_of_the_factors():
    factors = torch.tensor(rgb_factors(4))
    embedder = LatentRGBEmbedder(factors)
    factors.zero_()
    assert embedder.rgb_factors.abs().sum() > 0


@pytest.mark.parametrize("factors, bias, message", [
    (None, None, "has none"),
    ([[0.1, 0.2, 0.3]] * 16, None, "16 rows but the model makes 4-channel"),
    ([[0.1, 0.2]] * 4, None, "one row of 3 numbers"),
    ([[0.1, 0.2, float("nan")]] * 4, None, "NaN"),
    ([["red", 0.2, 0.3]] * 4, None, "must be numbers"),
    ([[0.1, 0.2, 0.3]] * 4, [0.1, 0.2], "bias must be 3 numbers"),
])
def test_latent_rgb_refuses_unusable_factors(factors, bias, message):
    with pytest.raises(ValueError, match=message):
        build_embedder("latent_rgb", 4, latent_rgb_factors=factors, latent_rgb_bias=bias)


def test_gram_of_a_feature_vector_is_its_outer_product():
    latents = random_latents(4, 6, 5)
    means = latents.mean(dim=(2, 3))
    rows, columns = zip(*[(i, j) for i in range(4) for j in range(i, 4)])
    expected = means[:, rows] * means[:, columns]
    torch.testing.assert_close(GramEmbedder(ChannelMeanEmbedder())(latents), expected)


def test_gram_of_a_feature_map_averages_channel_products_over_positions():
    latents = random_latents(3, 4, 5)
    gram = GramEmbedder(LatentEmbedder())(latents)
    channel_0_times_2 = (latents[:, 0] * latents[:, 2]).mean(dim=(1, 2))
    channel_1_squared = latents[:, 1].square().mean(dim=(1, 2))
    # upper triangle read row by row for 3 channels: (0,0) (0,1) (0,2) (1,1) (1,2) (2,2)
    torch.testing.assert_close(gram[:, 2], channel_0_times_2)
    torch.testing.assert_close(gram[:, 3], channel_1_squared)


def test_gram_ignores_where_things_are():
    latents = random_latents(4, 6, 6)
    mirrored = latents.flip(-1)
    grid = PooledGridEmbedder(2)
    assert not torch.allclose(grid(latents), grid(mirrored))
    torch.testing.assert_close(GramEmbedder(grid)(latents), GramEmbedder(grid)(mirrored))


def test_gram_refuses_too_many_channels():
    gram = GramEmbedder(LatentEmbedder())
    with pytest.raises(ValueError, match=f"at most {MAX_GRAM_CHANNELS}"):
        gram(torch.zeros(1, MAX_GRAM_CHANNELS + 1, 1, 1))
    with pytest.raises(ValueError, match=f"at most {MAX_GRAM_CHANNELS}"):
        gram.feature_size(MAX_GRAM_CHANNELS + 1, 8, 8)


@pytest.mark.parametrize("name, options, message", [
    ("sparkle", {}, "Unknown embedder 'sparkle'; choose one of: latent, "),
    ("pooled_grid", {"grid_size": 0}, "grid size must be a whole number of at least 1"),
    ("random_cnn", {"seed": 1.5}, "seed must be a whole number"),
])
def test_build_embedder_refuses_impossible_options(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_embedder(name, 4, **options)


def test_build_embedder_refuses_a_bad_channel_count():
    with pytest.raises(ValueError, match="latent channel count"):
        build_embedder("latent", 0)


@pytest.mark.parametrize("latents, message", [
    (torch.zeros(2, 4, 8), r"\[batch, channels, height, width\]"),
    (torch.zeros(2, 16, 8, 8), "built for 4-channel latents but received 16-channel"),
    (torch.zeros(2, 4, 8, 8, dtype=torch.int64), "floating-point"),
])
def test_embedders_refuse_latents_they_cannot_read(latents, message):
    with pytest.raises(ValueError, match=message):
        build_embedder("random_cnn", 4)(latents)


@pytest.mark.parametrize("name, too_small, minimum", [("rule_of_thirds", (2, 5), 3), ("edges", (1, 8), 2)])
def test_layout_embedders_state_their_minimum_size(name, too_small, minimum):
    embedder = build_embedder(name, 4)
    with pytest.raises(ValueError, match=f"at least {minimum}x{minimum}"):
        embedder(torch.zeros(1, 4, *too_small))
    assert embedder(torch.zeros(1, 4, minimum, minimum)).shape[0] == 1


@pytest.mark.parametrize("name", ["latent", "channel_mean", "pooled_grid", "random_cnn", "latent_rgb"])
def test_pixel_sized_latents_work(name):
    assert torch.isfinite(build(name, 4)(random_latents(4, 1, 1))).all()
