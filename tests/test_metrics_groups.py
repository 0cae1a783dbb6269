"""Per-prompt averaging, class coverage and class-histogram entropy."""
import math

import numpy as np
import pytest
import scipy.stats
import torch

from particle_repulsion.metrics import class_entropy, coverage, grouped, mean_pairwise_distance, vendi_score


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_grouped_averages_each_prompt_group_equally():
    features = torch.randn(7, 5, dtype=torch.float64)
    labels = ["cat", "cat", "cat", "dog", "dog", "dog", "dog"]
    result = grouped(vendi_score, features, labels)
    expected_cat, expected_dog = vendi_score(features[:3]), vendi_score(features[3:])
    assert result.per_group == pytest.approx({"cat": expected_cat, "dog": expected_dog})
    assert result.value == pytest.approx((expected_cat + expected_dog) / 2)
    assert result.notes == []


def test_groups_of_one_image_are_skipped_with_a_note():
    features = torch.randn(5, 3)
    result = grouped(mean_pairwise_distance, features, torch.tensor([0, 0, 1, 2, 2]))
    assert set(result.per_group) == {0, 2}
    assert len(result.notes) == 1 and "single image" in result.notes[0] and "[1]" in result.notes[0]
    assert result.value == pytest.approx((mean_pairwise_distance(features[:2]) + mean_pairwise_distance(features[3:])) / 2)


def test_grouping_needs_one_label_per_image_and_some_pair():
    with pytest.raises(ValueError, match="one label per image"):
        grouped(vendi_score, torch.randn(4, 3), [0, 0, 1])
    with pytest.raises(ValueError, match="single image"):
        grouped(vendi_score, torch.randn(3, 3), np.array([0, 1, 2]))


def test_coverage_counts_the_classes_hit():
    assert coverage([0, 0, 1, 1], num_classes=4) == 0.5
    assert coverage(torch.tensor([3, 2, 1, 0]), num_classes=4) == 1.0
    assert coverage(np.array([2]), num_classes=5) == pytest.approx(0.2)


def test_class_entropy_matches_scipy_and_its_bounds():
    labels = np.array([0, 0, 0, 1, 2, 2, 4])
    histogram = np.bincount(labels, minlength=6)
    assert class_entropy(labels, num_classes=6) == pytest.approx(scipy.stats.entropy(histogram), rel=1e-12)
    assert class_entropy([3, 3, 3], num_classes=6) == 0.0
    assert class_entropy([0, 1, 2, 3], num_classes=4) == pytest.approx(math.log(4))


@pytest.mark.parametrize(
    "labels,message",
    [([0, 4], "0..3"), ([-1, 0], "0..3"), ([0.2, 0.8], "integer"), ([], "No predicted labels")],
)
def test_bad_labels_are_refused(labels, message):
    with pytest.raises(ValueError, match=message):
        coverage(labels, num_classes=4)
    with pytest.raises(ValueError, match=message):
        class_entropy(labels, num_classes=4)
