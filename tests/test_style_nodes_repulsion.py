"""Repulsion in a trained style classifier's space spreads a batch over more classes.

A small, fully known setup, in-process: the data are a mixture of four well-separated Gaussian
"styles" of 4x8x8 latents, one style far more likely than the others (85%). Its denoiser is exact
(the posterior mean of the mixture), a style classifier is trained on samples of it, and batches are
drawn through the pack's real hook (`repulsive_sampler` around ComfyUI's Euler sampler) with the
classifier as the EMBEDDER. Same seeds and batch size with and without repulsion.
"""
import pytest
import torch

from particle_repulsion.embedders import train_style_classifier
from particle_repulsion.metrics import class_entropy

STYLES, CHANNELS, SIZE = 4, 4, 8
STYLE_STD = 0.5
PRIOR = torch.tensor([0.85, 0.05, 0.05, 0.05])
SIGMA_MIN, SIGMA_MAX = 0.03, 20.0
BATCH_SIZE, SEEDS, STEPS = 8, range(8), 12


def style_means() -> torch.Tensor:
    """`[STYLES, C, H, W]`: style k lights up channel k."""
    means = torch.zeros(STYLES, CHANNELS, SIZE, SIZE)
    for style in range(STYLES):
        means[style, style] = 2.0
    return means


MEANS = style_means()


def exact_denoiser(x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
    """E[x0 | x0 + sigma * noise = x] for the Gaussian mixture, `[N, C, H, W]` (one sigma for the batch)."""
    variance = STYLE_STD**2 + sigma.flatten()[0] ** 2
    offsets = x[:, None] - MEANS[None]  # [N, STYLES, C, H, W]
    log_weights = PRIOR.log()[None] - offsets.square().flatten(2).sum(-1) / (2 * variance)
    responsibilities = torch.softmax(log_weights, dim=1)[:, :, None, None, None]
    per_style = MEANS[None] + (STYLE_STD**2 / variance) * offsets
    return (responsibilities * per_style).sum(dim=1)


@pytest.fixture(scope="module", autouse=True)
def single_thread(comfy):
    """Tiny tensors: one thread is much faster than two on cores shared with other work."""
    from particle_repulsion.nodes.style_training import one_cpu_thread

    with one_cpu_thread(torch.device("cpu")):
        yield


@pytest.fixture(scope="module")
def style_classifier():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(STYLES).repeat_interleave(40)
    latents = MEANS[labels] + STYLE_STD * torch.randn(labels.numel(), CHANNELS, SIZE, SIZE, generator=generator)
    classifier, history = train_style_classifier(
        latents, labels, [f"style {style}" for style in range(STYLES)], sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
        epochs=15, batch_size=32, validation_fraction=0.25, seed=0)
    assert history[-1].clean_validation_accuracy >= 0.95  # the judge of the test below must be a good one
    classifier.metadata["latent_format"] = "synthetic"
    return classifier


def batch_entropy(comfy, classifier, strength: float, seed: int) -> float:
    """Entropy (nats) of the classes the classifier gives a batch drawn with repulsion `strength`."""
    import comfy.k_diffusion.sampling
    from particle_repulsion.nodes.embedder_recipes import StyleEmbedderRecipe
    from particle_repulsion.nodes.repulsion import repulsive_sampler
    from particle_repulsion.nodes.sampler_nodes import build_repulsion

    # The node's own path: the style embedder's class probabilities and the collision objective.
    repulsion = build_repulsion(strength=strength, strength_mode="relative", space="denoised", kernel="rbf",
                                bandwidth=0.0, start=0.0, end=1.0, objective="collision",
                                embedder=StyleEmbedderRecipe(classifier, "synthetic"))
    sampler = repulsive_sampler(comfy.samplers.ksampler("euler"), repulsion)
    sigmas = comfy.k_diffusion.sampling.get_sigmas_karras(STEPS, SIGMA_MIN, SIGMA_MAX)
    noise = torch.randn(BATCH_SIZE, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    samples = sampler.sampler_function(exact_denoiser, noise * sigmas[0], sigmas, extra_args={}, callback=None,
                                       disable=True)
    with torch.no_grad():
        predicted = classifier.classify(samples).argmax(dim=1)
    return class_entropy(predicted, STYLES)


def test_repulsion_in_the_classifier_space_spreads_the_batch_over_more_styles(comfy, style_classifier):
    plain = [batch_entropy(comfy, style_classifier, 0.0, seed) for seed in SEEDS]
    repelled = [batch_entropy(comfy, style_classifier, 2.0, seed) for seed in SEEDS]
    mean_plain, mean_repelled = sum(plain) / len(plain), sum(repelled) / len(repelled)
    print(f"class entropy over {len(SEEDS)} batches: {mean_plain:.3f} plain, {mean_repelled:.3f} repelled")
    assert mean_repelled > mean_plain + 0.15, (plain, repelled)
    assert sum(r > p for r, p in zip(repelled, plain)) > len(SEEDS) / 2, (plain, repelled)
