"""Log-Vendi entropy under the cosine kernel and its closed-form gradient (kernels/vendi.py)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vendi_score import vendi

from particle_repulsion.kernels import log_vendi_entropy, log_vendi_gradient

FEW = settings(max_examples=40, deadline=None)


def random_features(count, dimensions, seed, dtype=torch.float64):
    return torch.randn(count, dimensions, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def autograd_gradient(features):
    features = features.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(log_vendi_entropy(features), features)
    return gradient


def finite_difference_gradient(features, step=1e-6):
    gradient = torch.zeros_like(features)
    for index in np.ndindex(*features.shape):
        offset = torch.zeros_like(features)
        offset[index] = step
        gradient[index] = (log_vendi_entropy(features + offset) - log_vendi_entropy(features - offset)) / (2 * step)
    return gradient


@FEW
@given(seed=st.integers(0, 10_000), count=st.integers(2, 6), extra_dimensions=st.integers(0, 5))
def test_closed_form_gradient_equals_autograd(seed, count, extra_dimensions):
    features = random_features(count, count + extra_dimensions, seed)
    torch.testing.assert_close(log_vendi_gradient(features), autograd_gradient(features), rtol=0, atol=1e-5)


def test_closed_form_gradient_matches_finite_differences_when_rows_outnumber_dimensions():
    # 6 rows in 3 dimensions: K has a null space, where log(K/N) diverges.
    features = random_features(6, 3, seed=1)
    torch.testing.assert_close(log_vendi_gradient(features), finite_difference_gradient(features),
                               rtol=0, atol=1e-5)


@FEW
@given(seed=st.integers(0, 10_000), count=st.integers(2, 6))
def test_small_step_up_the_gradient_raises_the_entropy(seed, count):
    features = random_features(count, 8, seed)
    gradient = log_vendi_gradient(features)
    stepped = features + 1e-4 * gradient / gradient.norm()
    assert log_vendi_entropy(stepped) > log_vendi_entropy(features)


@pytest.mark.parametrize("count", [2, 5])
def test_entropy_of_identical_rows_is_zero(count):
    features = random_features(1, 7, seed=2).expand(count, 7)
    assert log_vendi_entropy(features).item() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("count", [2, 3, 6])
def test_entropy_of_orthogonal_rows_is_log_count_whatever_their_lengths(count):
    features = torch.diag(torch.arange(1, count + 1, dtype=torch.float64))
    assert log_vendi_entropy(features).item() == pytest.approx(math.log(count))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # vendi_score touches scipy.sparse.csr
def test_entropy_matches_the_reference_vendi_score_package():
    features = random_features(7, 5, seed=3)
    units = torch.nn.functional.normalize(features, dim=1).numpy()
    assert math.exp(log_vendi_entropy(features).item()) == pytest.approx(vendi.score_K(units @ units.T))


def test_single_row_has_zero_gradient():
    gradient = log_vendi_gradient(random_features(1, 4, seed=4))
    assert gradient.shape == (1, 4) and not gradient.any()


def test_zero_rows_get_a_zero_gradient_and_nothing_turns_nan():
    features = random_features(4, 6, seed=5)
    features[2] = 0
    gradient = log_vendi_gradient(features)
    assert torch.isfinite(gradient).all() and torch.isfinite(log_vendi_entropy(features))
    assert not gradient[2].any() and gradient[0].any()


def test_float32_in_float32_out_and_close_to_float64():
    features = random_features(5, 9, seed=6)
    gradient = log_vendi_gradient(features.float())
    assert gradient.dtype == torch.float32 and log_vendi_entropy(features.float()).dtype == torch.float32
    torch.testing.assert_close(gradient.double(), log_vendi_gradient(features), rtol=1e-5, atol=1e-6)


def test_non_matrix_features_are_refused():
    with pytest.raises(ValueError, match=r"\[N, F\]"):
        log_vendi_gradient(torch.randn(2, 3, 4))
