"""The repulsion nodes at their shipped defaults, through ComfyUI's own samplers, on every model sampling.

A single Gaussian has no modes to find: whatever repulsion adds to its samples' variance is left-over push
or noise that a user would see. Its exact denoiser becomes a ComfyUI MODEL (scripts/exact_models.py) under
each model sampling of `exact_models.FAMILIES` (EPS, v, v with zero terminal SNR, SD3 and Flux flow,
4-step turbo settings), and the Repulsive Sampler node is built from its own widget defaults.
"""
import pytest
import torch
import torch.nn.functional as F

SHAPE = (4, 8, 8)
STD = 0.5
BATCH = 8
SEEDS = range(2)  # the same seeds with and without repulsion: the comparison is paired


def gaussian_denoiser(mean):
    """The exact E[x0 | x0 + s n] for x0 ~ N(mean, STD^2 I), in the variance-exploding form."""

    def denoise(noisy, sigma):
        shrink = (STD**2 / (STD**2 + sigma.double() ** 2)).view(-1, 1, 1, 1)
        return (mean + shrink * (noisy.double() - mean)).to(noisy.dtype)

    return denoise


def pattern_mean():
    """A smooth, unit-scale mean image (real latents are not centred on zero)."""
    coarse = torch.randn(1, SHAPE[0], 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return F.interpolate(coarse, size=SHAPE[1:], mode="bilinear", align_corners=False)[0]


@pytest.fixture(scope="module")
def exact_models(comfy):
    import exact_models

    return exact_models


@pytest.fixture(scope="module")
def gaussian_models(exact_models):
    """{mean kind: MODEL predicting that Gaussian's posterior mean}, before any ModelSampling patch."""
    means = {"zero": torch.zeros(SHAPE, dtype=torch.float64), "pattern": pattern_mean()}
    return {kind: exact_models.denoiser_model(gaussian_denoiser(mean)) for kind, mean in means.items()}


@pytest.fixture(scope="module")
def node_defaults_wrapper(comfy):
    """KSAMPLER -> KSAMPLER: the Repulsive Sampler node at its declared defaults."""
    from particle_repulsion.nodes.sampler_nodes import RepulsiveSampler, repulsion_defaults

    defaults = repulsion_defaults()
    declared = RepulsiveSampler.INPUT_TYPES()
    assert set(defaults) == {name for section in declared.values() for name, (kind, _) in section.items()
                             if kind not in ("SAMPLER", "EMBEDDER")}
    assert defaults["strength"] > 0
    return lambda sampler: RepulsiveSampler().wrap(sampler, **defaults)[0]


def batch_variance(exact_models, family, model, sampler_wrapper=None):
    """Per-element variance across the batch, averaged over elements and seeds."""
    sigmas = family.sigmas(model)
    variances = [exact_models.sample_latents(model, family.samplers[0], sigmas, (BATCH, *SHAPE), seed,
                                             sampler_wrapper).double().var(dim=0).mean()
                 for seed in SEEDS]
    return torch.stack(variances).mean().item()


@pytest.mark.parametrize("family_name", [
    "EPS karras", "EPS normal", "v normal", "v zsnr karras", "v zsnr simple", "SD3 flow", "Flux flow",
    "turbo EPS, 4 steps", "turbo flow, 4 steps"])
@pytest.mark.parametrize("mean", ["zero", "pattern"])
def test_node_defaults_keep_a_single_gaussians_variance(exact_models, gaussian_models, node_defaults_wrapper,
                                                        family_name, mean):
    family = exact_models.family_named(family_name)
    model = family.patch(gaussian_models[mean])
    stock = batch_variance(exact_models, family, model)
    repelled = batch_variance(exact_models, family, model, node_defaults_wrapper)
    assert stock > 0.01
    assert repelled == pytest.approx(stock, rel=0.10)


def test_the_families_cover_every_model_sampling_kind(exact_models, gaussian_models):
    import comfy.model_sampling as sampling_kinds

    def kind(family):
        sampling = family.patch(gaussian_models["zero"]).get_model_object("model_sampling")
        for name, parametrisation in (("flow", sampling_kinds.CONST), ("v", sampling_kinds.V_PREDICTION),
                                      ("eps", sampling_kinds.EPS)):
            if isinstance(sampling, parametrisation):
                return name, family.steps <= 8, float(sampling.sigma_max) > 100  # few steps, zero terminal SNR

    kinds = {kind(family) for family in exact_models.FAMILIES}
    assert {("eps", False, False), ("v", False, False), ("v", False, True), ("flow", False, False),
            ("eps", True, False), ("flow", True, False)} <= kinds
