"""One diversity report for a batch, and short text renderings of it for a node's UI.

A report is a plain dict (easy to show, log or serialise):

    images, features        N and F of the measured feature table
    groups                  number of prompt groups averaged over, or None
    vendi_max               the largest possible Vendi score (the largest group's size)
    vendi                   Vendi score, cosine kernel (1 = all alike)
    mean_l2_distance        mean Euclidean distance between distinct pairs
    mean_cosine_distance    mean (1 - cosine similarity) between distinct pairs
    frechet                 Frechet distance to the reference set, or None without one
    frechet_shrinkage       (shrinkage of the batch, of the reference) when shrunk, else None
    notes                   list of human-readable remarks
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from functools import partial

from ._inputs import feature_matrix, label_list
from .diversity import mean_pairwise_distance, vendi_score
from .frechet import frechet_distance
from .groups import grouped

_SET_METRICS = {
    "vendi": vendi_score,
    "mean_l2_distance": partial(mean_pairwise_distance, metric="l2"),
    "mean_cosine_distance": partial(mean_pairwise_distance, metric="cosine"),
}

# (report key, label, True when a higher value means a more diverse batch)
_DISPLAYED_METRICS = (
    ("vendi", "Vendi score", True),
    ("mean_l2_distance", "Mean L2 distance", True),
    ("mean_cosine_distance", "Mean cosine distance", True),
    ("frechet", "Frechet to reference", False),
)


def diversity_report(features, reference=None, groups: Sequence[Hashable] | None = None) -> dict:
    """Measure the diversity of `features` `[N, F]` (N >= 2); see the module docstring for the keys.

    `reference` `[M, F]`: a "maximum diversity" set; when given, the Frechet distance to it is
    reported (lower = closer to that diversity). `groups`: one prompt label per image; the
    single-set metrics are then averaged over prompt groups, the Frechet distance stays global.
    """
    matrix = feature_matrix(features)
    report = {
        "images": matrix.shape[0],
        "features": matrix.shape[1],
        "groups": None,
        "vendi_max": matrix.shape[0],
        "frechet": None,
        "frechet_shrinkage": None,
        "notes": [],
    }
    if groups is None:
        report.update({key: metric(matrix) for key, metric in _SET_METRICS.items()})
    else:
        _add_grouped_metrics(report, matrix, groups)
    if reference is not None:
        _add_frechet(report, matrix, reference)
    return report


def format_report(report: dict) -> str:
    """A few lines of plain text describing `report` (from `diversity_report`) for a node's UI."""
    heading = f"Diversity of {report['images']} images, {report['features']} features each"
    if report["groups"] is not None:
        heading += f" (averaged over {report['groups']} prompt groups)"
    hints = {
        "vendi": f"1 = all alike, {report['vendi_max']} = all different",
        "frechet": "lower = closer to the reference"
        + ("; covariance shrunk" if report["frechet_shrinkage"] else ""),
    }
    lines = [heading]
    for key, label, _ in _displayed(report):
        hint = f"  ({hints[key]})" if key in hints else ""
        lines.append(f"  {label:<22}{_number(report[key]):>10}{hint}")
    lines.extend(f"Note: {note}" for note in report["notes"])
    return "\n".join(lines)


def compare_reports(report_a: dict, report_b: dict, labels: tuple[str, str] = ("without", "with")) -> str:
    """Side-by-side text table of two reports, with the change from `report_a` to `report_b`."""
    width = max(10, *(len(label) for label in labels))
    lines = [f"{'Metric':<22}{labels[0]:>{width}}{labels[1]:>{width}}   change"]
    for key, label, higher_is_diverse in _displayed(report_a):
        if report_b.get(key) is None:
            continue
        before, after = report_a[key], report_b[key]
        change = f"{_change(before, after)}  {_verdict(after - before, higher_is_diverse)}"
        lines.append(f"{label:<22}{_number(before):>{width}}{_number(after):>{width}}   {change}")
    if report_a["images"] != report_b["images"]:
        lines.append(
            f"Note: the batches differ in size ({report_a['images']} vs {report_b['images']} images), "
            "so the Vendi scores are not directly comparable."
        )
    return "\n".join(lines)


def _add_grouped_metrics(report: dict, matrix, groups) -> None:
    results = {key: grouped(metric, matrix, groups) for key, metric in _SET_METRICS.items()}
    report.update({key: result.value for key, result in results.items()})
    report["groups"] = len(results["vendi"].per_group)
    report["vendi_max"] = max(Counter(label_list(groups)).values())
    report["notes"].extend(results["vendi"].notes)


def _add_frechet(report: dict, matrix, reference) -> None:
    result = frechet_distance(matrix, reference)
    report["frechet"] = result.distance
    if result.shrunk:
        report["frechet_shrinkage"] = (result.shrinkage_a, result.shrinkage_b)
        report["notes"].append(
            "Fewer images than features: the Frechet covariances were shrunk toward a scaled identity "
            f"(Ledoit-Wolf, batch {result.shrinkage_a:.2f}, reference {result.shrinkage_b:.2f}); "
            "compare such distances only with others computed on the same set sizes."
        )


def _displayed(report: dict):
    """The (key, label, higher_is_diverse) rows of `_DISPLAYED_METRICS` that `report` has a value for."""
    return [row for row in _DISPLAYED_METRICS if report.get(row[0]) is not None]


def _number(value: float) -> str:
    return f"{value:.4g}"


def _change(before: float, after: float) -> str:
    difference = after - before
    if before == 0:
        return f"{difference:+.4g}"
    return f"{difference:+.4g} ({difference / abs(before):+.1%})"


def _verdict(difference: float, higher_is_diverse: bool) -> str:
    if difference == 0:
        return "same"
    return "more diverse" if (difference > 0) == higher_is_diverse else "less diverse"
