"""Diversity objectives (kernels/objectives.py): kernel sum, log-Vendi entropy, class collision."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from particle_repulsion.kernels import (
    CollisionKernel,
    KernelSum,
    LogVendiEntropy,
    RBFKernel,
    make_kernel,
    make_objective,
    repulsion_force,
)
from particle_repulsion.kernels.guidance import NoiseLevel, RepulsionSettings, denoised_shift
from particle_repulsion.kernels.objectives import coincident_groups

SHAPE = (2, 5, 5)
CLASSES = 4
FEW = settings(max_examples=20, deadline=None)


def latents(count, seed, dtype=torch.float32):
    return torch.randn(count, *SHAPE, generator=torch.Generator().manual_seed(seed)).to(dtype)


def identity_embed(batch):
    return batch.flatten(1)


class ProbabilityEmbedder:
    """A smooth class-probability map [N, 2, 5, 5] -> [N, 4]: softmax of a fixed linear read-out."""

    def __init__(self, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(CLASSES, math.prod(SHAPE), generator=generator) / 3

    def __call__(self, batch):
        return torch.softmax(batch.flatten(1) @ self.weight.to(batch.dtype).T, dim=1)


PROBABILITIES = ProbabilityEmbedder()

# (objective, embedder): every objective the nodes offer, with a feature map it accepts.
OBJECTIVES = {
    "kernel_sum-rbf": (make_objective("kernel_sum", "rbf"), identity_embed),
    "kernel_sum-imq": (make_objective("kernel_sum", "imq"), identity_embed),
    "kernel_sum-cosine": (make_objective("kernel_sum", "cosine"), identity_embed),
    "log_vendi-rbf": (make_objective("log_vendi", "rbf"), identity_embed),
    "log_vendi-cosine": (make_objective("log_vendi", "cosine"), identity_embed),
    "collision": (make_objective("collision", temperature=3.0), PROBABILITIES),
}
SEPARATING = {"log_vendi-rbf", "log_vendi-cosine"}


def batch_similarity(batch, objective, embed):
    with torch.enable_grad():
        return objective(embed(batch)).value.item()


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_small_step_against_the_force_lowers_the_batch_similarity(name, seed):
    objective, embed = OBJECTIVES[name]
    batch = latents(5, seed, torch.float64)
    force = repulsion_force(batch, embed, objective)
    step = 1e-3 / force.norm().item()
    assert batch_similarity(batch - step * force, objective, embed) < batch_similarity(batch, objective, embed)


def test_log_vendi_value_is_minus_the_entropy_of_the_normalised_kernel_matrix():
    features = latents(5, 3).flatten(1).requires_grad_(True)
    similarity = LogVendiEntropy(RBFKernel(40.0))(features)
    eigenvalues = torch.linalg.eigvalsh(similarity.matrix.double() / 5)
    assert similarity.value.item() == pytest.approx((eigenvalues * eigenvalues.log()).sum().item(), rel=1e-5)


@FEW
@given(seed=st.integers(0, 10_000), count=st.integers(2, 6), name=st.sampled_from(sorted(OBJECTIVES)))
def test_force_is_permutation_equivariant(seed, count, name):
    objective, embed = OBJECTIVES[name]
    batch = latents(count, seed)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(repulsion_force(batch[order], embed, objective),
                               repulsion_force(batch, embed, objective)[order], rtol=1e-4, atol=1e-6)


def reference_entropy(features, bandwidth):
    """H of the RBF kernel matrix through autograd-friendly float64 maths (no closed form)."""
    matrix = torch.exp(-torch.cdist(features, features).square() / bandwidth) / features.shape[0]
    eigenvalues = torch.linalg.eigvalsh(matrix)
    return -(eigenvalues * eigenvalues.log()).sum()


def test_log_vendi_feature_gradient_matches_autograd_through_the_eigenvalues():
    features = latents(5, 4, torch.float64).flatten(1).requires_grad_(True)
    gradient, _ = LogVendiEntropy(RBFKernel(30.0)).feature_gradient(features)
    (expected,) = torch.autograd.grad(-reference_entropy(features, 30.0), features)
    torch.testing.assert_close(gradient, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("objective", [KernelSum(RBFKernel(8.0)), KernelSum(CollisionKernel(2.0))],
                         ids=["kernel_sum", "collision"])
def test_kernel_sum_feature_gradient_holds_the_anchors_fixed(objective):
    embed = identity_embed if isinstance(objective.kernel, RBFKernel) else PROBABILITIES
    features = embed(latents(4, 5, torch.float64)).detach().requires_grad_(True)
    gradient, _ = objective.feature_gradient(features)
    (expected,) = torch.autograd.grad(objective.kernel(features, features.detach()).sum() / 4, features)
    torch.testing.assert_close(gradient, expected)


def test_force_is_the_embedders_jacobian_transpose_times_the_feature_gradient():
    objective, embed = OBJECTIVES["collision"]
    batch = latents(3, 6, torch.float64)
    features = embed(batch).detach().requires_grad_(True)
    feature_gradient, _ = objective.feature_gradient(features)
    expected = torch.stack([
        torch.einsum("f,fchw->chw", gradient, torch.autograd.functional.jacobian(lambda one: embed(one[None])[0], one))
        for one, gradient in zip(batch, feature_gradient)])
    torch.testing.assert_close(repulsion_force(batch, embed, objective), expected)


@pytest.mark.parametrize("name", sorted(set(OBJECTIVES) - SEPARATING))
def test_objectives_that_do_not_separate_duplicates_give_them_an_exactly_zero_force(name):
    objective, embed = OBJECTIVES[name]
    batch = latents(1, 7).expand(3, *SHAPE)
    force = repulsion_force(batch, embed, objective)
    assert torch.equal(force, torch.zeros_like(force))


@pytest.mark.parametrize("name", sorted(SEPARATING))
def test_entropy_splits_duplicates_deterministically(name):
    objective, embed = OBJECTIVES[name]
    batch = latents(1, 8).expand(3, *SHAPE).clone()
    force = repulsion_force(batch, embed, objective)
    assert torch.isfinite(force).all() and force.abs().max() > 0
    assert torch.pdist(force.flatten(1)).min() > 0  # every duplicate is pushed its own way
    torch.testing.assert_close(force.sum(dim=0), torch.zeros(SHAPE), atol=1e-6, rtol=0)  # the group stays put
    assert torch.equal(force, repulsion_force(batch, embed, objective))
    stepped = batch - 1e-2 * force / force.norm()
    assert torch.pdist(stepped.flatten(1)).min() > 0


def test_entropy_splits_only_the_duplicates_of_a_mixed_batch():
    batch = torch.cat([latents(1, 9).expand(2, *SHAPE), latents(2, 10)])
    features = identity_embed(batch).requires_grad_(True)
    assert coincident_groups(features.detach()) == [[0, 1]]
    force = repulsion_force(batch, identity_embed, make_objective("log_vendi"))
    assert not torch.allclose(force[0], force[1])


def test_round_off_between_identical_latents_never_becomes_a_full_strength_push():
    # The cosine kernel's gradient on two identical rows is round-off (5e-11); normalising it to the
    # relative strength used to turn it into a full push.
    batch = latents(1, 11).expand(2, *SHAPE).clone()
    force = repulsion_force(batch, identity_embed, make_objective("kernel_sum", "cosine"))
    shift = denoised_shift(force, batch, 3 * torch.randn_like(batch), 2.0, NoiseLevel(1.0, 2.0),
                           RepulsionSettings(strength=1.0))
    assert torch.equal(shift, torch.zeros_like(shift))


def test_collision_kernel_is_the_overlap_of_tempered_class_probabilities():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    kernel = CollisionKernel(2.0)
    tempered = torch.softmax(logits / 2.0, dim=1)
    torch.testing.assert_close(kernel(torch.softmax(logits, 1), torch.softmax(logits, 1)), tempered @ tempered.T)


def test_collision_refuses_features_that_are_not_probabilities():
    with pytest.raises(ValueError, match="class probabilities"):
        repulsion_force(latents(3, 12), identity_embed, make_objective("collision"))


@pytest.mark.parametrize("call, message", [
    (lambda: make_objective("dpp"), "unknown objective"),
    (lambda: CollisionKernel(0.0), "temperature"),
    (lambda: make_kernel("collision", temperature=-1.0), "temperature"),
])
def test_bad_objective_settings_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_entropy_keeps_pushing_alike_samples_where_the_kernel_sum_goes_flat():
    # Two near-duplicates among spread samples: the entropy's push on them is the largest of the batch,
    # while the RBF kernel sum, flat at identity, pushes them least.
    spread = latents(3, 13) * 3
    near = spread[:1] + 1e-3 * latents(1, 14)
    batch = torch.cat([spread, near])
    entropy_force = repulsion_force(batch, identity_embed, make_objective("log_vendi"))
    kernel_force = repulsion_force(batch, identity_embed, make_objective("kernel_sum"))
    entropy_share = F.normalize(entropy_force.flatten(1).norm(dim=1), p=1, dim=0)
    kernel_share = F.normalize(kernel_force.flatten(1).norm(dim=1), p=1, dim=0)
    assert entropy_share[[0, 3]].sum() > kernel_share[[0, 3]].sum()
