"""Pure maths of contextual repulsion (kernels/contextual.py): ascent step, block range, sigma window."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from particle_repulsion.kernels import log_vendi_entropy
from particle_repulsion.kernels.contextual import (
    ContextualSettings,
    entropy_ascent_step,
    repel_streams,
    select_blocks,
)
from particle_repulsion.kernels.guidance import in_schedule_window

FEW = settings(max_examples=30, deadline=None)


def token_streams(count, tokens=7, width=12, spread=0.3, seed=0, dtype=torch.float32):
    """``[N, T, D]`` streams that share most of their content, as the text streams of one prompt do."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, tokens, width, generator=generator, dtype=torch.float64)
    own = torch.randn(count, tokens, width, generator=generator, dtype=torch.float64)
    return (shared + spread * own).to(dtype)


def sphere_slopes(features):
    """|dH/dz_i| per row ``[N]``: the entropy's slope on the unit sphere, by autograd in float64."""
    rows = features.double().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(log_vendi_entropy(rows), rows)
    return (gradient * rows.detach().norm(dim=1, keepdim=True)).norm(dim=1)


def angles_moved(before, after):
    cosines = torch.nn.functional.cosine_similarity(before.flatten(1).double(), after.flatten(1).double(), dim=1)
    return torch.arccos(cosines.clamp(-1, 1))


@FEW
@given(seed=st.integers(0, 10_000), count=st.integers(2, 6), spread=st.floats(1e-3, 2.0))
def test_ascent_step_is_the_autograd_gradient_scaled_by_the_squared_row_norms(seed, count, spread):
    streams = token_streams(count, spread=spread, seed=seed)
    features = streams.flatten(1)
    rows = features.double().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(log_vendi_entropy(rows), rows)
    expected = 0.3 * rows.detach().pow(2).sum(dim=1, keepdim=True) * gradient
    step = entropy_ascent_step(features, 0.3)
    assert step.dtype == torch.float32
    torch.testing.assert_close(step.double(), expected, rtol=1e-4, atol=1e-5)


@FEW
@given(seed=st.integers(0, 10_000), count=st.integers(2, 6), spread=st.floats(1e-2, 2.0))
def test_a_small_step_raises_the_vendi_entropy(seed, count, spread):
    streams = token_streams(count, spread=spread, seed=seed, dtype=torch.float64)
    repelled = repel_streams(streams, ContextualSettings(step_size=0.01, iterations=2))
    assert log_vendi_entropy(repelled.flatten(1)) > log_vendi_entropy(streams.flatten(1))


@FEW
@given(seed=st.integers(0, 10_000), count=st.integers(2, 6), spread=st.floats(1e-2, 2.0))
def test_each_row_turns_by_step_size_times_its_sphere_slope(seed, count, spread):
    streams = token_streams(count, spread=spread, seed=seed, dtype=torch.float64)
    step_size = 1e-3
    repelled = repel_streams(streams, ContextualSettings(step_size=step_size))
    expected = step_size * sphere_slopes(streams.flatten(1))
    torch.testing.assert_close(angles_moved(streams, repelled), expected, rtol=1e-3, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(2, 10), spread=st.floats(1e-3, 3.0),
       clusters=st.integers(1, 4))
def test_the_sphere_slope_stays_below_the_bound_the_tooltip_quotes(seed, count, spread, clusters):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, 16, generator=generator, dtype=torch.float64)
    members = centres[torch.randint(0, clusters, (count,), generator=generator)]
    features = torch.randn(1, 16, generator=generator, dtype=torch.float64) + spread * members
    assert sphere_slopes(features).max() < 0.7


def test_the_two_sample_slope_peaks_near_its_closed_form_maximum():
    # Two rows at angle theta: H = h((1 + cos theta) / 2), each row's slope is sin(theta) ln cot(theta / 2).
    theta = torch.linspace(0.05, 1.5, 300, dtype=torch.float64)
    closed_form = torch.sin(theta) * torch.log(1 / torch.tan(theta / 2))
    pairs = torch.stack([torch.stack([torch.tensor([1.0, 0.0], dtype=torch.float64),
                                      torch.stack([torch.cos(angle), torch.sin(angle)])]) for angle in theta])
    measured = torch.stack([sphere_slopes(pair)[0] for pair in pairs])
    torch.testing.assert_close(measured, closed_form, rtol=1e-6, atol=1e-9)
    assert 0.65 < closed_form.max() < 0.7


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_the_step_is_portable_across_activation_scales(scale):
    streams = token_streams(4, seed=1, dtype=torch.float64)
    chosen = ContextualSettings(step_size=0.2, iterations=3)
    # float32 maths: equal up to float32 round-off, relative to the scale
    torch.testing.assert_close(repel_streams(scale * streams, chosen), scale * repel_streams(streams, chosen),
                               rtol=2e-5, atol=1e-5 * scale)


def test_the_step_depends_only_on_the_geometry_not_on_the_width():
    streams = token_streams(4, tokens=5, width=6, seed=2, dtype=torch.float64).flatten(1)
    rotation, _ = torch.linalg.qr(torch.randn(90, 30, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    wider = streams @ rotation.T  # the same 4 rows, isometrically embedded in 90 dimensions
    chosen = ContextualSettings(step_size=0.2, iterations=2)
    torch.testing.assert_close(repel_streams(wider, chosen), repel_streams(streams, chosen) @ rotation.T,
                               rtol=2e-5, atol=1e-6)  # float32 maths


def test_shape_and_dtype_are_kept_and_a_single_stream_does_not_move():
    streams = token_streams(3, dtype=torch.bfloat16)
    repelled = repel_streams(streams, ContextualSettings(step_size=0.5))
    assert repelled.shape == streams.shape and repelled.dtype == torch.bfloat16
    single = token_streams(1)
    assert torch.equal(repel_streams(single, ContextualSettings(step_size=0.5)), single)


def test_identical_streams_stay_finite():
    streams = token_streams(1).expand(4, -1, -1)
    repelled = repel_streams(streams, ContextualSettings(step_size=0.5, iterations=3))
    assert torch.isfinite(repelled).all()


@pytest.mark.parametrize("block_count, expected", [
    (19, list(range(6, 13))),   # Flux-dev's double blocks
    (38, list(range(13, 25))),  # SD3.5-Large's joint blocks
    (4, [1, 2]),
    (3, [1]),
])
def test_the_default_range_is_the_middle_third(block_count, expected):
    assert select_blocks(block_count, 0.33, 0.67) == expected


def test_the_whole_range_selects_every_block_and_an_empty_range_none():
    assert select_blocks(5, 0.0, 1.0) == [0, 1, 2, 3, 4]
    assert select_blocks(5, 0.5, 0.5) == []
    assert select_blocks(0, 0.0, 1.0) == []


def test_a_reversed_block_range_is_refused():
    with pytest.raises(ValueError, match="block_start"):
        select_blocks(10, 0.7, 0.3)


def karras_like_schedule(steps):
    return torch.cat([torch.linspace(14.6, 0.03, steps), torch.zeros(1)])


@pytest.mark.parametrize("steps, end, expected_steps", [(20, 1 / 20, 1), (28, 4 / 28, 4), (4, 0.5, 2), (10, 1.0, 10)])
def test_end_of_k_over_steps_repels_exactly_the_first_k_steps(steps, end, expected_steps):
    schedule = karras_like_schedule(steps)
    inside = [in_schedule_window(sigma.item(), schedule, 0.0, end) for sigma in schedule[:-1]]
    assert inside == [True] * expected_steps + [False] * (steps - expected_steps)


def test_intermediate_sigmas_of_a_repelled_step_are_inside_the_window():
    schedule = karras_like_schedule(20)
    halfway = math.sqrt(schedule[0].item() * schedule[1].item())  # where heun / dpm_2 evaluate in between
    assert in_schedule_window(halfway, schedule, 0.0, 1 / 20)
    assert not in_schedule_window(schedule[1].item(), schedule, 0.0, 1 / 20)


@pytest.mark.parametrize("bad, match", [
    ({"step_size": -0.1}, "step size"),
    ({"step_size": 0.1, "iterations": 0}, "iteration"),
    ({"step_size": 0.1, "start": 0.5, "end": 0.2}, "start"),
])
def test_bad_settings_are_refused_with_a_clear_message(bad, match):
    with pytest.raises(ValueError, match=match):
        ContextualSettings(**bad)


def test_step_zero_or_an_empty_window_is_disabled():
    assert not ContextualSettings(step_size=0.0).enabled
    assert not ContextualSettings(step_size=0.3, start=0.2, end=0.2).enabled
    assert ContextualSettings(step_size=0.3).enabled
