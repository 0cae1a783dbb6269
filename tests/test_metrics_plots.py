"""Pillow figures: exact sizes, visible content, and the ComfyUI IMAGE conversion."""
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA

from particle_repulsion.metrics import (
    colour_map,
    pca_2d,
    projection_plot,
    report_figure,
    similarity_heatmap,
    to_image_tensor,
)

MIN_PIXEL_STD = 8.0  # a blank canvas has 0; two dots on a wide panel give about 18


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def pixels(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture, dtype=np.float64)


@pytest.mark.parametrize("size", [(384, 384), (257, 131), (64, 64)])
@pytest.mark.parametrize("count", [2, 5, 40])
def test_panels_have_the_requested_size_and_visible_content(size, count):
    features = torch.randn(count, 12)
    for picture in (similarity_heatmap(features, size=size), projection_plot(features, size=size)):
        assert picture.size == size and picture.mode == "RGB"
        assert pixels(picture).std() > MIN_PIXEL_STD


@pytest.mark.parametrize("size", [(768, 384), (513, 200), (128, 64)])
def test_report_figure_has_exactly_the_requested_size(size):
    figure = report_figure(torch.randn(6, 8), thumbnails=torch.rand(6, 16, 24, 3), size=size)
    assert figure.size == size
    assert pixels(figure).std() > MIN_PIXEL_STD


def test_report_figure_shows_the_heatmap_left_and_the_projection_right():
    features = torch.randn(5, 8)
    figure = pixels(report_figure(features, size=(600, 300)))
    np.testing.assert_array_equal(figure[:, :300], pixels(similarity_heatmap(features, size=(300, 300))))
    np.testing.assert_array_equal(figure[:, 300:], pixels(projection_plot(features, size=(300, 300))))


def test_heatmaps_of_identical_and_orthogonal_features_differ():
    identical = pixels(similarity_heatmap(torch.ones(6, 6)))
    orthogonal = pixels(similarity_heatmap(torch.eye(6)))
    assert np.abs(identical - orthogonal).mean() > 10.0
    yellow = colour_map(np.array(1.0))
    yellow_in_identical = np.all(identical == yellow, axis=-1).sum()
    yellow_in_orthogonal = np.all(orthogonal == yellow, axis=-1).sum()
    # All 36 cells are similarity 1 for identical features; only the 6 diagonal ones for orthogonal.
    assert yellow_in_identical > 4 * yellow_in_orthogonal > 0


def test_thumbnails_are_pasted_at_their_points():
    features = torch.randn(4, 6)
    red = torch.zeros(4, 16, 16, 3)
    red[..., 0] = 1.0
    with_thumbnails = pixels(projection_plot(features, thumbnails=red))
    red_pixels = np.all(with_thumbnails == [255, 0, 0], axis=-1).sum()
    assert red_pixels > 4 * 20 * 20
    assert np.all(pixels(projection_plot(features)) == [255, 0, 0], axis=-1).sum() == 0
    with pytest.raises(ValueError, match="thumbnails"):
        projection_plot(features, thumbnails=torch.rand(3, 16, 16, 3))


def test_pca_2d_matches_scikit_learn_up_to_sign():
    features = np.random.default_rng(0).normal(size=(10, 5)) * [5, 3, 1, 0.5, 0.1]
    expected = PCA(n_components=2).fit_transform(features)
    projected = pca_2d(features)
    np.testing.assert_allclose(np.abs(projected), np.abs(expected), atol=1e-9)
    assert np.all(projected[np.abs(projected).argmax(axis=0), [0, 1]] > 0)


def test_degenerate_projections_do_not_crash():
    assert np.array_equal(pca_2d(torch.ones(3, 4)), np.zeros((3, 2)))
    assert projection_plot(torch.ones(3, 4)).size == (384, 384)
    assert report_figure(torch.randn(1, 4)).size == (768, 384)


def test_to_image_tensor_gives_a_comfyui_image():
    picture = Image.new("RGBA", (5, 3), (255, 128, 0, 10))
    image = to_image_tensor(picture)
    assert image.shape == (1, 3, 5, 3) and image.dtype == torch.float32
    torch.testing.assert_close(image[0, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))


def test_unusable_sizes_and_ranges_are_refused():
    with pytest.raises(ValueError, match="at least"):
        similarity_heatmap(torch.randn(3, 3), size=(40, 400))
    with pytest.raises(ValueError, match="at least"):
        report_figure(torch.randn(3, 3), size=(100, 300))
    with pytest.raises(ValueError, match="value_range"):
        similarity_heatmap(torch.randn(3, 3), value_range=(1.0, 1.0))
