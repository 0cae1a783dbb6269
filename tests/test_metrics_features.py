"""The thesis's location and style features and the downscaled-pixel fallback."""
import pytest
import torch

from particle_repulsion.metrics import location_features, pixel_features, style_features


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.mark.parametrize("channels,height,width", [(4, 64, 64), (16, 48, 80), (4, 5, 7)])
def test_location_features_have_one_value_per_grid_cell_whatever_the_latent(channels, height, width):
    features = location_features(torch.randn(3, channels, height, width), grid=4)
    assert features.shape == (3, 16)
    assert features.dtype == torch.float32


def test_location_features_put_a_bright_corner_in_the_first_cell():
    latents = torch.zeros(2, 4, 32, 32)
    latents[0, :, :8, :8] = 1.0
    latents[1, :, 24:, 24:] = 1.0
    features = location_features(latents, grid=4)
    assert features[0].argmax() == 0 and features[1].argmax() == 15
    assert features[0, 0] == pytest.approx(1.0)


def test_location_features_average_channels_and_ignore_resolution():
    latents = torch.randn(2, 4, 16, 16)
    doubled = latents.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(location_features(doubled, grid=8), location_features(latents, grid=8))
    expected = latents.mean(dim=1).reshape(2, 8, 2, 8, 2).mean(dim=(2, 4)).flatten(1)
    torch.testing.assert_close(location_features(latents, grid=8), expected)


def test_style_features_are_the_normalised_channel_gram_upper_triangle():
    feature_map = torch.randn(2, 3, 4, 5)
    features = style_features(feature_map)
    assert features.shape == (2, 6)
    for image in range(2):
        flat = feature_map[image].reshape(3, -1)
        expected = [float(flat[c] @ flat[d]) / 20 for c in range(3) for d in range(c, 3)]
        torch.testing.assert_close(features[image], torch.tensor(expected))


def test_style_ignores_where_things_are_and_location_does_not():
    feature_map = torch.randn(1, 4, 8, 8)
    scrambled = feature_map.flatten(2)[:, :, torch.randperm(64)].reshape(1, 4, 8, 8)
    torch.testing.assert_close(style_features(scrambled), style_features(feature_map))
    assert not torch.allclose(location_features(scrambled, grid=4), location_features(feature_map, grid=4))


def test_pixel_features_average_channels_last_images():
    images = torch.zeros(2, 32, 48, 3)
    images[0, ..., 0] = 1.0
    images[1, :16] = 0.5
    features = pixel_features(images, size=4)
    assert features.shape == (2, 3 * 4 * 4)
    per_channel = features.reshape(2, 3, 4, 4)
    assert torch.all(per_channel[0, 0] == 1.0) and torch.all(per_channel[0, 1:] == 0.0)
    assert torch.all(per_channel[1, :, :2] == 0.5) and torch.all(per_channel[1, :, 2:] == 0.0)


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (32, 32, 3)])
def test_pixel_features_refuse_other_layouts(shape):
    with pytest.raises(ValueError, match="channels last"):
        pixel_features(torch.rand(shape))


def test_spatial_features_refuse_flat_input():
    with pytest.raises(ValueError, match="height, width"):
        location_features(torch.randn(2, 64))
    with pytest.raises(ValueError, match="height, width"):
        style_features(torch.randn(2, 4, 8))


def test_empty_grids_are_refused():
    with pytest.raises(ValueError, match="grid"):
        location_features(torch.randn(2, 4, 8, 8), grid=0)
    with pytest.raises(ValueError, match="size"):
        pixel_features(torch.rand(2, 8, 8, 3), size=0)
