"""Vendi score and mean pairwise distance against independent references (vendi-score, SciPy)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import pdist, squareform
from vendi_score import vendi

from particle_repulsion.metrics import (
    cosine_similarity_matrix,
    mean_pairwise_distance,
    rbf_similarity_matrix,
    vendi_score,
    vendi_score_from_similarity,
)

# vendi-score 0.0.3 touches a SciPy namespace deprecated since SciPy 1.8; not our concern here.
pytestmark = pytest.mark.filterwarnings("ignore:Please import `csr_matrix`:DeprecationWarning")


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.mark.parametrize("sample_count,feature_count", [(2, 3), (7, 5), (12, 40), (30, 4)])
def test_vendi_matches_the_vendi_score_package(sample_count, feature_count):
    features = np.random.default_rng(sample_count).normal(size=(sample_count, feature_count))
    expected = vendi.score_dual(features)
    assert vendi_score(torch.from_numpy(features)) == pytest.approx(expected, abs=1e-6)
    assert vendi_score(features.astype(np.float32)) == pytest.approx(expected, rel=1e-5)


def test_vendi_from_similarity_matches_score_K_on_a_gaussian_kernel():
    points = np.random.default_rng(0).normal(size=(9, 3))
    similarity = np.exp(-squareform(pdist(points, "sqeuclidean")) / 4.0)
    assert vendi_score_from_similarity(similarity) == pytest.approx(vendi.score_K(similarity), abs=1e-6)


def test_rbf_vendi_uses_the_median_squared_distance_as_bandwidth():
    points = np.random.default_rng(1).normal(size=(8, 6))
    squared = pdist(points, "sqeuclidean")
    similarity = np.exp(-squareform(squared) / np.median(squared))
    assert vendi_score(points, kernel="rbf") == pytest.approx(vendi.score_K(similarity), abs=1e-6)
    np.testing.assert_allclose(rbf_similarity_matrix(points).numpy(), similarity, atol=1e-12)


@pytest.mark.parametrize("kernel", ["cosine", "rbf"])
def test_identical_images_score_one(kernel):
    features = torch.randn(1, 16).repeat(6, 1)
    assert vendi_score(features, kernel=kernel) == pytest.approx(1.0, abs=1e-9)


def test_orthogonal_features_score_their_count():
    rotation, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    features = rotation[:6] * torch.rand(6, 1, dtype=torch.float64).add(0.5)
    assert vendi_score(features) == pytest.approx(6.0, abs=1e-9)


def test_all_black_images_count_as_one_and_never_give_nan():
    zeros = torch.zeros(4, 12)
    assert vendi_score(zeros) == pytest.approx(1.0, abs=1e-9)
    assert mean_pairwise_distance(zeros, "cosine") == 0.0
    mixed = torch.cat([torch.zeros(2, 3), torch.eye(3)])
    similarity = cosine_similarity_matrix(mixed)
    assert similarity[0, 1] == 1.0 and similarity[0, 2] == 0.0
    zero_rows_as_a_fourth_direction = torch.cat([torch.eye(4)[[3, 3]], torch.eye(4)[:3]])
    assert vendi_score(mixed) == pytest.approx(vendi_score(zero_rows_as_a_fourth_direction), abs=1e-9)


def test_mean_pairwise_distances_match_scipy():
    features = np.random.default_rng(2).normal(size=(11, 7))
    assert mean_pairwise_distance(features, "l2") == pytest.approx(pdist(features).mean(), rel=1e-12)
    assert mean_pairwise_distance(features, "cosine") == pytest.approx(pdist(features, "cosine").mean(), rel=1e-12)


def test_l2_distance_stays_exact_on_large_norm_features():
    offsets = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    features = offsets + 1e8
    assert mean_pairwise_distance(features, "l2") == pytest.approx(5.0, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), sample_count=st.integers(2, 10), feature_count=st.integers(1, 8))
def test_set_metrics_ignore_the_order_of_images(seed, sample_count, feature_count):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(sample_count, feature_count, generator=generator, dtype=torch.float64)
    shuffled = features[torch.randperm(sample_count, generator=generator)]
    for metric in (vendi_score, mean_pairwise_distance, lambda f: mean_pairwise_distance(f, "cosine")):
        assert metric(shuffled) == pytest.approx(metric(features), rel=1e-9, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), sample_count=st.integers(2, 10), feature_count=st.integers(1, 8))
def test_vendi_lies_between_one_and_the_batch_size(seed, sample_count, feature_count):
    features = torch.randn(sample_count, feature_count, generator=torch.Generator().manual_seed(seed))
    score = vendi_score(features)
    assert 1.0 - 1e-9 <= score <= sample_count + 1e-9


@pytest.mark.parametrize("metric", [vendi_score, mean_pairwise_distance])
def test_a_single_image_is_refused_clearly(metric):
    with pytest.raises(ValueError, match="at least 2 images"):
        metric(torch.randn(1, 5))


@pytest.mark.parametrize(
    "features,message",
    [
        (torch.randn(4, 3, 2), "2-D"),
        (torch.randn(4, 0), "no feature"),
        (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), "NaN"),
    ],
)
def test_malformed_features_are_refused(features, message):
    with pytest.raises(ValueError, match=message):
        vendi_score(features)


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match="kernel"):
        vendi_score(torch.randn(3, 2), kernel="laplace")
    with pytest.raises(ValueError, match="distance"):
        mean_pairwise_distance(torch.randn(3, 2), metric="manhattan")


@pytest.mark.parametrize(
    "similarity,message",
    [
        (torch.tensor([[1.0, 0.2], [0.5, 1.0]]), "symmetric"),
        (torch.tensor([[2.0, 0.2], [0.2, 2.0]]), "diagonal"),
        (torch.ones(2, 3), "square"),
    ],
)
def test_invalid_similarity_matrices_are_refused(similarity, message):
    with pytest.raises(ValueError, match=message):
        vendi_score_from_similarity(similarity)
