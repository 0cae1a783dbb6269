"""The diversity report dict and its text renderings."""
import pytest
import torch

from particle_repulsion.metrics import (
    compare_reports,
    diversity_report,
    format_report,
    frechet_distance,
    grouped,
    mean_pairwise_distance,
    vendi_score,
)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_report_holds_the_direct_measurements():
    features = torch.randn(6, 4, dtype=torch.float64)
    report = diversity_report(features)
    assert (report["images"], report["features"], report["groups"], report["vendi_max"]) == (6, 4, None, 6)
    assert report["vendi"] == pytest.approx(vendi_score(features))
    assert report["mean_l2_distance"] == pytest.approx(mean_pairwise_distance(features, "l2"))
    assert report["mean_cosine_distance"] == pytest.approx(mean_pairwise_distance(features, "cosine"))
    assert report["frechet"] is None and report["frechet_shrinkage"] is None
    assert report["notes"] == []


def test_report_with_reference_and_groups():
    features = torch.randn(9, 3, dtype=torch.float64)
    reference = torch.randn(20, 3, dtype=torch.float64) * 2
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 2]
    report = diversity_report(features, reference=reference, groups=labels)
    assert report["frechet"] == pytest.approx(frechet_distance(features, reference).distance)
    assert report["vendi"] == pytest.approx(grouped(vendi_score, features, labels).value)
    assert (report["groups"], report["vendi_max"]) == (2, 4)
    assert any("single image" in note for note in report["notes"])


def test_report_flags_shrunk_frechet_distances():
    report = diversity_report(torch.randn(4, 10), reference=torch.randn(8, 10))
    assert report["frechet_shrinkage"] is not None
    assert any("shrunk" in note for note in report["notes"])
    assert "covariance shrunk" in format_report(report)


def test_report_refuses_a_single_image():
    with pytest.raises(ValueError, match="at least 2 images"):
        diversity_report(torch.randn(1, 8))


def test_format_report_names_every_value():
    report = diversity_report(torch.randn(5, 3), reference=torch.randn(10, 3))
    text = format_report(report)
    for label in ("Vendi score", "Mean L2 distance", "Mean cosine distance", "Frechet to reference"):
        assert label in text
    assert f"{report['vendi']:.4g}" in text and "5 images" in text


def test_compare_reports_says_which_batch_is_more_diverse():
    reference = torch.randn(30, 3)
    alike = diversity_report(torch.randn(1, 3) + 0.05 * torch.randn(6, 3), reference=reference)
    varied = diversity_report(torch.randn(6, 3) * 3, reference=reference)
    text = compare_reports(alike, varied, labels=("plain", "repelled"))
    lines = text.splitlines()
    assert "plain" in lines[0] and "repelled" in lines[0]
    vendi_line = next(line for line in lines if line.startswith("Vendi score"))
    assert "more diverse" in vendi_line and "+" in vendi_line
    assert "less diverse" in compare_reports(varied, alike).splitlines()[1]
    assert "Note" not in text


def test_compare_reports_shows_frechet_lower_as_more_diverse_and_warns_on_size():
    reference = torch.randn(40, 2) * 4
    near = diversity_report(torch.randn(8, 2) * 4, reference=reference)
    far = diversity_report(torch.randn(5, 2) * 0.1 + 10, reference=reference)
    text = compare_reports(far, near)
    frechet_line = next(line for line in text.splitlines() if line.startswith("Frechet"))
    assert "-" in frechet_line and "more diverse" in frechet_line
    assert "differ in size" in text
    without_reference = diversity_report(torch.randn(8, 2))
    assert "Frechet" not in compare_reports(without_reference, near)
