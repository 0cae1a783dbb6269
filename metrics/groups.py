"""Per-prompt averaging and label-based diversity (coverage, class entropy).

Diversity only means something among images of the same prompt: two prompts differ anyway. So a
batch with several prompts is split into groups (one label per image), each group is measured on
its own and the results are averaged, every group weighing the same.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

from ._inputs import feature_matrix, label_list


@dataclass(frozen=True)
class GroupedMetric:
    """A metric averaged over groups: the mean, each group's value and notes on skipped groups."""

    value: float
    per_group: dict[Hashable, float]
    notes: list[str] = field(default_factory=list)


def grouped(metric_fn: Callable[[torch.Tensor], float], features, groups: Sequence[Hashable]) -> GroupedMetric:
    """Average `metric_fn` over the groups of rows of `features` `[N, F]`.

    `groups` holds one hashable label per row (e.g. the prompt index). Groups with a single image
    are skipped with a note, since a lone image has no diversity to measure. Raises ValueError when
    the labels do not match the rows or no group has 2 images.
    """
    matrix = feature_matrix(features, min_samples=1)
    labels = label_list(groups)
    if len(labels) != matrix.shape[0]:
        raise ValueError(f"Got {len(labels)} group labels for {matrix.shape[0]} images; give one label per image.")
    rows_by_label: dict[Hashable, list[int]] = {}
    for row, label in enumerate(labels):
        rows_by_label.setdefault(label, []).append(row)
    singletons = [label for label, rows in rows_by_label.items() if len(rows) == 1]
    per_group = {
        label: float(metric_fn(matrix[rows])) for label, rows in rows_by_label.items() if len(rows) > 1
    }
    if not per_group:
        raise ValueError("Every prompt group has a single image; diversity needs 2 or more images per prompt.")
    notes = [f"Skipped {len(singletons)} group(s) with a single image: {singletons}."] if singletons else []
    return GroupedMetric(sum(per_group.values()) / len(per_group), per_group, notes)


def coverage(predicted_labels, num_classes: int) -> float:
    """Fraction of the `num_classes` classes predicted for at least one image, in [0, 1]."""
    return float((_class_histogram(predicted_labels, num_classes) > 0).sum()) / num_classes


def class_entropy(predicted_labels, num_classes: int) -> float:
    """Shannon entropy (nats) of the batch's predicted-class histogram.

    0 when every image gets the same class; at most `log(min(N, num_classes))`, reached when the
    images spread as evenly as possible over the classes.
    """
    histogram = _class_histogram(predicted_labels, num_classes)
    probabilities = histogram[histogram > 0] / histogram.sum()
    return float((probabilities * probabilities.reciprocal().log()).sum())


def _class_histogram(predicted_labels, num_classes: int) -> torch.Tensor:
    """Counts `[num_classes]` (float64) of integer labels `predicted_labels` `[N]` in 0..num_classes-1."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1; got {num_classes}.")
    labels = torch.as_tensor(predicted_labels).flatten()
    if labels.numel() == 0:
        raise ValueError("No predicted labels were given.")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError("Predicted labels must be integer class indices, not scores; take the argmax first.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"Predicted labels must lie in 0..{num_classes - 1}; got {labels.min()}..{labels.max()}.")
    return torch.bincount(labels.long().cpu(), minlength=num_classes).double()
