"""Frechet distance against a float64 SciPy reference, closed forms, shrinkage and bad input."""
import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.covariance import ledoit_wolf
from sklearn.covariance import ledoit_wolf_shrinkage as sklearn_shrinkage

from particle_repulsion.metrics import FrechetResult, frechet_distance, ledoit_wolf_shrinkage


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def scipy_frechet(mean_a, covariance_a, mean_b, covariance_b):
    """The textbook FID formula with scipy's general matrix square root (fine when well-conditioned)."""
    root = scipy.linalg.sqrtm(covariance_a @ covariance_b).real
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(covariance_a + covariance_b - 2 * root))


def correlated_samples(seed, sample_count, feature_count, offset=0.0):
    generator = np.random.default_rng(seed)
    mixing = generator.normal(size=(feature_count, feature_count))
    return generator.normal(size=(sample_count, feature_count)) @ mixing + offset


def test_matches_the_scipy_reference_when_samples_outnumber_features():
    set_a = correlated_samples(0, 600, 8)
    set_b = correlated_samples(1, 500, 8, offset=0.7)
    expected = scipy_frechet(
        set_a.mean(0), np.cov(set_a, rowvar=False), set_b.mean(0), np.cov(set_b, rowvar=False)
    )
    result = frechet_distance(torch.from_numpy(set_a), set_b)
    assert result.distance == pytest.approx(expected, rel=1e-6)
    assert result == FrechetResult(result.distance, 0.0, 0.0)
    assert not result.shrunk


def test_one_dimensional_gaussians_follow_the_closed_form():
    unit = np.random.default_rng(2).normal(size=(400, 1))
    unit = (unit - unit.mean()) / unit.std(ddof=1)
    distance = frechet_distance(unit * 2.0 + 1.0, unit * 0.5 - 3.0).distance
    assert distance == pytest.approx((1.0 + 3.0) ** 2 + (2.0 - 0.5) ** 2, rel=1e-9)


def test_a_pure_shift_costs_its_squared_length():
    features = correlated_samples(3, 50, 6)
    shift = np.arange(6.0)
    assert frechet_distance(features, features + shift).distance == pytest.approx(np.sum(shift**2), rel=1e-9)


def test_a_set_is_at_distance_zero_from_itself():
    features = correlated_samples(4, 300, 16, offset=100.0)
    scale = np.trace(np.cov(features, rowvar=False))
    assert frechet_distance(features, features).distance <= 1e-9 * scale


@pytest.mark.parametrize("feature_count", [3, 50])
def test_sets_without_spread_are_compared_by_their_means(feature_count):
    set_a, set_b = torch.ones(30, feature_count), torch.full((40, feature_count), 3.0)
    assert frechet_distance(set_a, set_b).distance == pytest.approx(4.0 * feature_count)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), count_a=st.integers(2, 12), count_b=st.integers(2, 12))
def test_frechet_ignores_order_and_is_symmetric(seed, count_a, count_b):
    generator = torch.Generator().manual_seed(seed)
    set_a = torch.randn(count_a, 5, generator=generator, dtype=torch.float64)
    set_b = torch.randn(count_b, 5, generator=generator, dtype=torch.float64) + 0.5
    reference = frechet_distance(set_a, set_b).distance
    shuffled = frechet_distance(set_a[torch.randperm(count_a, generator=generator)], set_b).distance
    assert shuffled == pytest.approx(reference, rel=1e-8, abs=1e-10)
    assert frechet_distance(set_b, set_a).distance == pytest.approx(reference, rel=1e-8, abs=1e-10)
    assert reference >= 0.0


def test_ledoit_wolf_intensity_matches_scikit_learn():
    for seed, shape in enumerate([(5, 10), (20, 7), (3, 40)]):
        features = correlated_samples(seed, *shape)
        assert ledoit_wolf_shrinkage(features) == pytest.approx(sklearn_shrinkage(features), rel=1e-9)


def test_fewer_samples_than_features_shrinks_and_says_so():
    small_set = correlated_samples(5, 6, 12)
    large_set = correlated_samples(6, 60, 12, offset=0.3)
    result = frechet_distance(small_set, large_set)
    assert result.shrunk
    assert result.shrinkage_a == pytest.approx(sklearn_shrinkage(small_set), rel=1e-9)
    assert result.shrinkage_b == 0.0
    # The shrunk covariance is scikit-learn's Ledoit-Wolf estimate, rescaled to the unbiased 1/(N-1).
    shrunk_covariance = ledoit_wolf(small_set)[0] * len(small_set) / (len(small_set) - 1)
    expected = scipy_frechet(
        small_set.mean(0), shrunk_covariance, large_set.mean(0), np.cov(large_set, rowvar=False)
    )
    assert result.distance == pytest.approx(expected, rel=1e-6)


def test_small_sets_in_many_dimensions_match_dense_references():
    small_a = correlated_samples(9, 5, 40)
    small_b = correlated_samples(10, 8, 40, offset=0.2)
    shrunk = [ledoit_wolf(x)[0] * len(x) / (len(x) - 1) for x in (small_a, small_b)]
    expected = scipy_frechet(small_a.mean(0), shrunk[0], small_b.mean(0), shrunk[1])
    assert frechet_distance(small_a, small_b).distance == pytest.approx(expected, rel=1e-6)
    # Unshrunk covariances X^T X / (n - 1) have rank < F: tr((C_a C_b)^1/2) is then the sum of the
    # singular values of X_a X_b^T / sqrt((n - 1)(m - 1)) (same non-zero spectrum).
    centred_a, centred_b = (x - x.mean(0) for x in (small_a, small_b))
    cross = centred_a @ centred_b.T / np.sqrt((len(small_a) - 1) * (len(small_b) - 1))
    traces = sum(np.sum(x**2) / (len(x) - 1) for x in (centred_a, centred_b))
    mean_gap = np.sum((small_a.mean(0) - small_b.mean(0)) ** 2)
    expected_unshrunk = mean_gap + traces - 2 * np.linalg.svd(cross, compute_uv=False).sum()
    unshrunk = frechet_distance(small_a, small_b, shrinkage=None).distance
    assert unshrunk == pytest.approx(expected_unshrunk, rel=1e-9)


def test_shrinkage_can_be_forced_or_switched_off():
    small_set = correlated_samples(7, 4, 9)
    other_set = correlated_samples(8, 5, 9)
    unshrunk = frechet_distance(small_set, other_set, shrinkage=None)
    assert not unshrunk.shrunk and np.isfinite(unshrunk.distance)
    forced = frechet_distance(small_set, other_set, shrinkage=0.25)
    assert (forced.shrinkage_a, forced.shrinkage_b) == (0.25, 0.25)
    assert forced.distance != pytest.approx(unshrunk.distance)
    with pytest.raises(ValueError, match="shrinkage"):
        frechet_distance(small_set, other_set, shrinkage=1.5)


@pytest.mark.parametrize(
    "set_a,set_b,message",
    [
        (torch.randn(1, 4), torch.randn(5, 4), "generated set needs at least 2"),
        (torch.randn(5, 4), torch.randn(1, 4), "reference set needs at least 2"),
        (torch.randn(5, 4), torch.randn(5, 3), "same features"),
    ],
)
def test_unusable_sets_are_refused(set_a, set_b, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(set_a, set_b)
