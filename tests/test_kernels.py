"""Kernels, the median bandwidth and the SVGD kernel-sum repulsion force (kernels/similarity.py, kernels/repulsion.py)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from particle_repulsion.kernels import (
    KERNEL_NAMES,
    CosineKernel,
    IMQKernel,
    KernelSum,
    NonFiniteFeatures,
    RBFKernel,
    make_kernel,
    median_bandwidth,
    repulsion,
    repulsion_force,
    squared_distances,
)

SHAPE = (2, 6, 6)  # C, H, W of the test latents
FEW = settings(max_examples=25, deadline=None)


def latents(count, seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, *SHAPE, generator=generator).to(dtype)


def identity_embed(batch):
    return batch.flatten(1)


class ConvEmbedder:
    """A non-linear feature map [N, 2, H, W] -> [N, 12]: random 3x3 conv, tanh, 2x2 average pooling."""

    def __init__(self, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(3, SHAPE[0], 3, 3, generator=generator) / 3
        self.bias = torch.randn(3, generator=generator) / 3

    def __call__(self, batch):
        hidden = torch.tanh(F.conv2d(batch, self.weight, self.bias, padding=1))
        return F.adaptive_avg_pool2d(hidden, 2).flatten(1)


EMBEDDERS = {"identity": identity_embed, "conv": ConvEmbedder()}


def kernel_sum_force(batch, embed, kernel):
    """The repulsion force of the thesis's SVGD objective with `kernel`."""
    return repulsion_force(batch, embed, KernelSum(kernel))


def total_similarity(batch, embed, kernel):
    features = embed(batch)
    return kernel(features, features).sum().item()


# --- squared distances and bandwidth ----------------------------------------------------------------

@pytest.mark.parametrize("separate_anchors", [False, True], ids=["anchors-are-features", "separate-anchors"])
def test_squared_distances_are_exact_on_large_norm_latents(separate_anchors):
    # Offsets of 1e4 make |x|^2 ~ 1e10: the expansion |x|^2 + |y|^2 - 2xy would be off by thousands.
    features = torch.randn(6, 512, generator=torch.Generator().manual_seed(1)) + 1e4
    anchors = features.clone() if separate_anchors else features.detach()
    exact = (features.double()[:, None] - features.double()[None]).pow(2).sum(-1)
    torch.testing.assert_close(squared_distances(features, anchors).double(), exact, rtol=1e-5, atol=1e-3)


def test_squared_distances_gradient_is_exact_on_large_norm_latents():
    generator = torch.Generator().manual_seed(1)
    features = (torch.randn(6, 512, generator=generator) + 1e4).requires_grad_(True)
    weights = torch.rand(6, 6, generator=generator)
    (gradient,) = torch.autograd.grad((squared_distances(features, features.detach()) * weights).sum(), features)
    differences = features.detach().double()[:, None] - features.detach().double()[None]
    exact = 2 * (weights.double()[..., None] * differences).sum(1)
    torch.testing.assert_close(gradient.double(), exact, rtol=1e-4, atol=1e-4)


def test_squared_distances_gradient_matches_finite_differences_for_both_inputs():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    anchors = torch.randn(3, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(squared_distances, (features, anchors))


def test_gradient_is_the_same_whether_anchors_share_the_features_memory():
    features = torch.randn(5, 7, generator=torch.Generator().manual_seed(3), requires_grad=True)
    weights = torch.randn(5, 5, generator=torch.Generator().manual_seed(4))
    (shared,) = torch.autograd.grad((squared_distances(features, features.detach()) * weights).sum(), features)
    (copied,) = torch.autograd.grad((squared_distances(features, features.detach().clone()) * weights).sum(),
                                    features)
    torch.testing.assert_close(shared, copied)


@pytest.mark.parametrize("count", [4, 6])  # 6 and 15 pairs: even and odd
@pytest.mark.parametrize("kernel", [RBFKernel(), IMQKernel()], ids=["rbf", "imq"])
def test_median_kernel_is_the_same_whether_anchors_share_the_features_memory(kernel, count):
    features = torch.randn(count, 7, generator=torch.Generator().manual_seed(count), requires_grad=True)
    torch.testing.assert_close(kernel(features, features.detach()), kernel(features, features.detach().clone()))


@pytest.mark.parametrize("count", [3, 6])  # 3 and 15 pairs: an odd count, so the median is unambiguous
def test_median_bandwidth_is_median_pair_distance_over_log_count(count):
    points = np.random.default_rng(count).normal(size=(count, 4))
    pairs = [np.sum((points[i] - points[j]) ** 2) for i in range(count) for j in range(i + 1, count)]
    expected = np.median(pairs) / math.log(count + 1)
    assert median_bandwidth(torch.from_numpy(points)).item() == pytest.approx(expected)


def test_median_bandwidth_of_two_particles_is_their_distance():
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert median_bandwidth(points).item() == pytest.approx(25 / math.log(3))


def test_median_bandwidth_ignores_duplicates_and_stays_positive_when_all_coincide():
    duplicated = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    # 3 coinciding pairs are skipped, leaving the three pairs at distance 5.
    assert median_bandwidth(duplicated).item() == pytest.approx(25 / math.log(5))
    for coinciding in (torch.zeros(4, 3), torch.zeros(1, 3)):
        bandwidth = median_bandwidth(coinciding).item()
        assert math.isfinite(bandwidth) and bandwidth > 0


# --- kernels ------------------------------------------------------------------------------------------

def test_kernel_values_on_a_3_4_5_triangle():
    origin, corner = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])
    assert RBFKernel(5.0)(origin, corner).item() == pytest.approx(math.exp(-5))
    assert IMQKernel(25.0)(origin, corner).item() == pytest.approx(2 ** -0.5)
    assert IMQKernel(25.0, beta=-2.0)(origin, corner).item() == pytest.approx(0.25)
    assert CosineKernel()(torch.tensor([[1.0, 0.0]]), corner).item() == pytest.approx(0.6)


def test_kernel_matrix_shape_and_self_similarity():
    features, anchors = torch.randn(4, 3), torch.randn(6, 3)
    for name in KERNEL_NAMES:
        kernel = make_kernel(name)
        assert kernel(features, anchors).shape == (4, 6)
        torch.testing.assert_close(kernel(features, features).diagonal(), torch.ones(4))


def test_cosine_kernel_gives_zero_vectors_zero_similarity_and_finite_gradients():
    features = torch.tensor([[0.0, 0.0], [1.0, 2.0]], requires_grad=True)
    similarity = CosineKernel()(features, features.detach())
    assert similarity[0].tolist() == [0.0, 0.0]
    (gradient,) = torch.autograd.grad(similarity.sum(), features)
    assert torch.isfinite(gradient).all()


def test_make_kernel_builds_each_named_kernel_with_its_bandwidth():
    assert make_kernel("rbf", 2.0) == RBFKernel(2.0)
    assert make_kernel("imq", "median") == IMQKernel("median")
    assert make_kernel("cosine", 3.0) == CosineKernel()


@pytest.mark.parametrize("bandwidth", [0, -1.0, math.nan, math.inf, "mean", True, None])
def test_bad_bandwidths_are_refused(bandwidth):
    with pytest.raises(ValueError, match="bandwidth"):
        make_kernel("rbf", bandwidth)


def test_bad_kernel_settings_are_refused():
    with pytest.raises(ValueError, match="unknown kernel"):
        make_kernel("gaussian")
    with pytest.raises(ValueError, match="beta"):
        IMQKernel(beta=0.5)
    with pytest.raises(ValueError, match="dimensions"):
        RBFKernel()(torch.randn(2, 3), torch.randn(2, 4))


# --- the repulsion force -----------------------------------------------------------------------------

@FEW
@given(seed=st.integers(0, 10_000), count=st.integers(2, 6), kernel_name=st.sampled_from(KERNEL_NAMES),
       embedder_name=st.sampled_from(sorted(EMBEDDERS)))
def test_force_is_permutation_equivariant(seed, count, kernel_name, embedder_name):
    batch = latents(count, seed)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    embed, kernel = EMBEDDERS[embedder_name], make_kernel(kernel_name)
    torch.testing.assert_close(kernel_sum_force(batch[order], embed, kernel),
                               kernel_sum_force(batch, embed, kernel)[order], rtol=1e-4, atol=1e-6)


@FEW
@given(seed=st.integers(0, 10_000), count=st.integers(2, 6), kernel_name=st.sampled_from(["rbf", "imq"]))
def test_radial_force_on_latents_is_translation_invariant(seed, count, kernel_name):
    batch = latents(count, seed)
    shift = 20 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed + 1))
    kernel = make_kernel(kernel_name)
    force = kernel_sum_force(batch, identity_embed, kernel)
    torch.testing.assert_close(kernel_sum_force(batch + shift, identity_embed, kernel), force,
                               rtol=1e-3, atol=1e-4 * force.abs().max().item())


@FEW
@given(seed=st.integers(0, 10_000), count=st.integers(2, 6), kernel_name=st.sampled_from(KERNEL_NAMES),
       embedder_name=st.sampled_from(sorted(EMBEDDERS)))
def test_small_step_against_the_force_lowers_total_similarity(seed, count, kernel_name, embedder_name):
    batch = latents(count, seed, torch.float64)
    embed, kernel = EMBEDDERS[embedder_name], make_kernel(kernel_name, 50.0)
    if embedder_name == "conv":
        embed = lambda batch, conv=embed: conv(batch.float()).double()  # noqa: E731 - float32 weights
    force = kernel_sum_force(batch, embed, kernel)
    step = 1e-3 / force.norm().item()
    assert total_similarity(batch - step * force, embed, kernel) < total_similarity(batch, embed, kernel)


def explicit_rbf_gradient(features, bandwidth):
    """d/dphi_i sum_j exp(-|phi_i - phi_j|^2 / h) with phi_j held fixed, from the formula: [N, F]."""
    differences = features[:, None] - features[None]
    weights = torch.exp(-differences.pow(2).sum(-1) / bandwidth)
    return -(2 / bandwidth) * (weights[..., None] * differences).sum(1)


def explicit_cosine_gradient(features):
    """d/dphi_i sum_j cos(phi_i, phi_j) with phi_j held fixed, from the formula: [N, F]."""
    norms = features.norm(dim=1, keepdim=True)
    units = features / norms
    anchors_sum = units.sum(0, keepdim=True)
    return (anchors_sum - (units * anchors_sum).sum(1, keepdim=True) * units) / norms


@pytest.mark.parametrize("kernel, feature_gradient", [
    (RBFKernel(0.5), lambda features: explicit_rbf_gradient(features, 0.5)),
    (CosineKernel(), explicit_cosine_gradient),
], ids=["rbf", "cosine"])
def test_force_equals_per_particle_jacobian_transpose_times_feature_gradient(kernel, feature_gradient):
    embed = ConvEmbedder(seed=5)
    batch = latents(4, seed=6)
    features = embed(batch)
    expected = torch.stack([
        torch.einsum("f,fchw->chw", gradient,
                     torch.autograd.functional.jacobian(lambda particle: embed(particle[None])[0], particle))
        for particle, gradient in zip(batch, feature_gradient(features))
    ]) / len(batch)
    torch.testing.assert_close(kernel_sum_force(batch, embed, kernel), expected, rtol=1e-4, atol=1e-6)


class CountingIdentity(torch.autograd.Function):
    forward_calls = 0
    backward_calls = 0

    @staticmethod
    def forward(ctx, batch):
        CountingIdentity.forward_calls += 1
        return batch.flatten(1)

    @staticmethod
    def backward(ctx, grad):
        CountingIdentity.backward_calls += 1
        return grad.reshape(-1, *SHAPE)


@pytest.mark.parametrize("count, backward_passes", [(5, 1), (1, 0)])
def test_one_embedder_forward_and_at_most_one_backward_per_batch(count, backward_passes):
    CountingIdentity.forward_calls = CountingIdentity.backward_calls = 0
    kernel_sum_force(latents(count, seed=7), CountingIdentity.apply, RBFKernel())
    assert (CountingIdentity.forward_calls, CountingIdentity.backward_calls) == (1, backward_passes)


def test_single_sample_gets_zero_force():
    force = kernel_sum_force(latents(1, seed=8), identity_embed, RBFKernel())
    assert force.shape == (1, *SHAPE) and not force.any()


@pytest.mark.parametrize("kernel_name", KERNEL_NAMES)
def test_two_samples_are_pushed_apart(kernel_name):
    batch = latents(2, seed=9)
    force = kernel_sum_force(batch, identity_embed, make_kernel(kernel_name))
    assert torch.sum(-force[0] * (batch[0] - batch[1])) > 0
    assert torch.sum(-force[1] * (batch[1] - batch[0])) > 0


@pytest.mark.parametrize("kernel_name", ["rbf", "imq"])
def test_radial_kernels_push_two_samples_with_opposite_forces(kernel_name):
    batch = latents(2, seed=9)
    force = kernel_sum_force(batch, identity_embed, make_kernel(kernel_name))
    assert force.abs().max() > 0
    torch.testing.assert_close(force[0], -force[1])


@pytest.mark.parametrize("kernel_name", KERNEL_NAMES)
@pytest.mark.parametrize("embedder_name", sorted(EMBEDDERS))
def test_identical_samples_get_finite_zero_force(kernel_name, embedder_name):
    batch = latents(1, seed=10).expand(3, *SHAPE)
    force = kernel_sum_force(batch, EMBEDDERS[embedder_name], make_kernel(kernel_name))
    assert torch.isfinite(force).all() and force.abs().max() < 1e-6


@pytest.mark.parametrize("context", [torch.inference_mode, torch.no_grad])
def test_works_inside_comfyui_style_gradient_free_contexts(context):
    expected = kernel_sum_force(latents(3, seed=11), EMBEDDERS["conv"], RBFKernel())
    with context():
        batch = latents(3, seed=11)
        assert batch.is_inference() == (context is torch.inference_mode)
        force = kernel_sum_force(batch, EMBEDDERS["conv"], RBFKernel())
    torch.testing.assert_close(force, expected)


def test_half_precision_input_is_computed_in_float32_and_returned_in_half():
    received = []

    def recording_embed(batch):
        received.append(batch.dtype)
        return batch.flatten(1)

    batch = latents(4, seed=12, dtype=torch.float16)
    force = kernel_sum_force(batch, recording_embed, RBFKernel())
    assert received == [torch.float32] and force.dtype == torch.float16
    torch.testing.assert_close(force, kernel_sum_force(batch.float(), identity_embed, RBFKernel()).half())


def test_repulsion_reports_the_kernel_matrix_and_mean_pair_similarity():
    batch = torch.zeros(2, *SHAPE)
    batch[1, 0, 0, 0] = 2.0  # squared distance 4
    result = repulsion(batch, identity_embed, KernelSum(RBFKernel(8.0)))
    torch.testing.assert_close(result.similarity, torch.tensor([[1.0, math.exp(-0.5)], [math.exp(-0.5), 1.0]]))
    assert not result.similarity.requires_grad
    assert result.mean_similarity == pytest.approx(math.exp(-0.5))
    assert math.isnan(repulsion(batch[:1], identity_embed, KernelSum(RBFKernel())).mean_similarity)


def test_embedder_mistakes_are_explained():
    batch = latents(3, seed=13)
    with pytest.raises(ValueError, match="one feature row per sample"):
        kernel_sum_force(batch, lambda batch: batch, RBFKernel())
    with pytest.raises(ValueError, match="differentiabl"):
        kernel_sum_force(batch, lambda batch: batch.flatten(1).detach(), RBFKernel())
    with pytest.raises(NonFiniteFeatures, match="NaN or infinite features"):
        kernel_sum_force(batch, lambda batch: batch.flatten(1) * math.inf, RBFKernel())
