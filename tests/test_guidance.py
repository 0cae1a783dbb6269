"""The step maths: schedule position, sigma window, absolute and relative strength."""
import pytest
import torch

from particle_repulsion.kernels.guidance import RepulsionSettings, batch_rms, denoised_shift, in_window, schedule_progress

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


def test_absolute_shift_is_alpha_sigma_squared_force():
    force = torch.randn(3, 4, 5, 5)
    shift = denoised_shift(force, torch.zeros_like(force), torch.ones_like(force), 2.0,
                           RepulsionSettings(strength=0.25, strength_mode="absolute"))
    torch.testing.assert_close(shift, 0.25 * 4.0 * force)


def test_relative_shift_is_a_fraction_of_the_denoising_displacement():
    generator = torch.Generator().manual_seed(1)
    force, denoised, x = (torch.randn(3, 4, 5, 5, generator=generator) * scale for scale in (1e-3, 1.0, 7.0))
    shift = denoised_shift(force, denoised, x, 5.0, RepulsionSettings(strength=0.4))
    assert batch_rms(shift).item() == pytest.approx(0.4 * batch_rms(denoised - x).item(), rel=1e-5)
    assert torch.allclose(torch.nn.functional.cosine_similarity(shift.flatten(), force.flatten(), dim=0), torch.tensor(1.0))


def test_relative_shift_of_a_zero_force_is_zero():
    zeros = torch.zeros(2, 4, 3, 3)
    assert torch.equal(denoised_shift(zeros, torch.ones_like(zeros), zeros, 1.0, RepulsionSettings(strength=1.0)), zeros)


@pytest.mark.parametrize("bad", [{"strength_mode": "loud"}, {"space": "pixels"}, {"start": 0.8, "end": 0.2}])
def test_settings_reject_bad_choices(bad):
    with pytest.raises(ValueError):
        RepulsionSettings(strength=1.0, **bad)
