"""The step maths: schedule position, sigma window, absolute and relative strength, the denoising span."""
import pytest
import torch

from particle_repulsion.kernels.guidance import (
    PROFILE_POWER,
    NoiseLevel,
    RepulsionSettings,
    batch_rms,
    denoised_shift,
    in_window,
    orthonormal_basis,
    outside_denoising_span,
    schedule_progress,
)

SIGMAS = torch.tensor([10.0, 6.0, 3.0, 1.0, 0.0])


@pytest.mark.parametrize("step", range(5))
def test_schedule_progress_at_each_step(step):
    assert schedule_progress(SIGMAS[step].item(), SIGMAS) == pytest.approx(step / 4)


def test_schedule_progress_between_steps_and_outside():
    assert schedule_progress(8.0, SIGMAS) == pytest.approx(0.5 / 4)
    assert schedule_progress(20.0, SIGMAS) == 0.0


def test_window_end_k_over_steps_selects_the_first_k_steps():
    settings = RepulsionSettings(strength=1.0, start=0.0, end=0.5)
    assert [in_window(settings, sigma.item(), SIGMAS) for sigma in SIGMAS] == [True, True, False, False, False]
    every_step = RepulsionSettings(strength=1.0, start=0.0, end=1.0)
    assert all(in_window(every_step, sigma.item(), SIGMAS) for sigma in SIGMAS[:-1])
    assert in_window(settings, 123.0, None)
    assert not in_window(RepulsionSettings(strength=0.0), 3.0, SIGMAS)


EPS_LEVEL = NoiseLevel(signal=1.0, noise=5.0)


def batch(seed, scale=1.0, shape=(3, 4, 5, 5)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_absolute_shift_is_alpha_sigma_squared_force():
    force = batch(0)
    shift = denoised_shift(force, torch.zeros_like(force), torch.ones_like(force), 2.0, EPS_LEVEL,
                           RepulsionSettings(strength=0.25, strength_mode="absolute"))
    torch.testing.assert_close(shift, 0.25 * 4.0 * force)


@pytest.mark.parametrize("level", [NoiseLevel(1.0, 5.0), NoiseLevel(1.0, 0.3), NoiseLevel(0.25, 0.75),
                                   NoiseLevel(0.0, 1.0)], ids=["eps-sigma5", "eps-sigma0.3", "flow-t0.75", "flow-t1"])
def test_relative_shift_has_rms_strength_times_cubed_noise_share(level):
    force, denoised, x = batch(1, 1e-3), batch(2), batch(3, 7.0)
    shift = denoised_shift(force, denoised, x, level.noise, level, RepulsionSettings(strength=0.4))
    expected = 0.4 * (level.noise**2 / (level.noise**2 + level.signal**2)) ** PROFILE_POWER
    assert batch_rms(shift).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("level", [NoiseLevel(1.0, 5.0), NoiseLevel(0.4, 0.6)], ids=["eps", "flow"])
def test_relative_shift_has_no_component_along_any_denoising_direction(level):
    force, denoised, x = batch(4), batch(5), batch(6, 3.0)
    shift = denoised_shift(force, denoised, x, level.noise, level, RepulsionSettings(strength=1.0))
    directions = (level.signal * denoised - x).flatten(1)
    overlaps = shift.flatten(1) @ directions.T / directions.norm(dim=1)
    assert overlaps.abs().max().item() < 1e-5 * shift.norm().item()
    assert batch_rms(shift).item() > 0


def test_denoising_directions_are_measured_in_the_signal_units_of_flow_states():
    # A flow state x = (1 - t) x0 + t n denoises toward D along D - x / (1 - t), not along D - x.
    level = NoiseLevel(signal=0.5, noise=0.5)
    denoised, x = batch(7), batch(8)
    along_flow_direction = (level.signal * denoised - x)
    kept = outside_denoising_span(along_flow_direction, denoised, x, level)
    assert batch_rms(kept).item() < 1e-5 * batch_rms(along_flow_direction).item()
    assert batch_rms(outside_denoising_span(denoised - x, denoised, x, level)).item() > 0.1


def test_a_force_inside_the_denoising_span_gives_no_shift_not_amplified_round_off():
    denoised, x = batch(9), batch(10, 4.0)
    force = 0.3 * (denoised - x)[[1, 2, 0]] - 2.0 * (denoised - x)  # mixes the batch's own denoising directions
    shift = denoised_shift(force, denoised, x, 4.0, EPS_LEVEL, RepulsionSettings(strength=1.0))
    assert torch.equal(shift, torch.zeros_like(shift))


def test_relative_shift_of_a_zero_force_is_zero():
    zeros = torch.zeros(2, 4, 3, 3)
    shift = denoised_shift(zeros, torch.ones_like(zeros), zeros, 1.0, EPS_LEVEL, RepulsionSettings(strength=1.0))
    assert torch.equal(shift, zeros)


def test_noise_level_share_and_ratio():
    assert NoiseLevel(1.0, 1.0).noise_share == pytest.approx(0.5)
    assert NoiseLevel(0.5, 0.5).noise_to_signal == pytest.approx(1.0)
    assert NoiseLevel(0.0, 1.0).noise_share == 1.0 and NoiseLevel(0.0, 1.0).noise_to_signal == float("inf")
    assert NoiseLevel(1.0, 0.0).noise_share == 0.0


def test_orthonormal_basis_spans_the_rows_and_drops_duplicates():
    rows = batch(11, shape=(3, 50))
    basis = orthonormal_basis(torch.cat([rows, rows[:1]]))
    assert basis.shape == (3, 50)
    torch.testing.assert_close(basis @ basis.T, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close((rows @ basis.T) @ basis, rows, atol=1e-4, rtol=1e-4)
    assert orthonormal_basis(torch.zeros(2, 5)).shape == (0, 5)


@pytest.mark.parametrize("bad", [{"strength_mode": "loud"}, {"space": "pixels"}, {"start": 0.8, "end": 0.2}])
def test_settings_reject_bad_choices(bad):
    with pytest.raises(ValueError):
        RepulsionSettings(strength=1.0, **bad)
