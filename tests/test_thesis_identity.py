"""The contract with the thesis: ComfyUI's euler sampler on D' is the thesis's repulsive Euler loop."""
import torch


def gaussian_denoiser(mean: float, data_std: float):
    """The exact denoiser D(x, sigma) = E[x0 | x] for data x0 ~ N(mean, data_std^2 I)."""

    def denoise(x, sigma, **kwargs):
        variance = sigma.view(-1, 1, 1, 1) ** 2
        return mean + data_std ** 2 / (data_std ** 2 + variance) * (x - mean)

    return denoise


def thesis_loop(x, sigmas, denoise, alpha, force_fn):
    """x_next = x + eps (s - alpha R), eps = sigma (sigma - sigma_next), s = (D - x) / sigma^2."""
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        score = (denoise(x, sigma.expand(x.shape[0])) - x) / sigma ** 2
        x = x + sigma * (sigma - sigma_next) * (score - alpha * force_fn(x))
    return x


def test_euler_on_the_repelled_prediction_is_the_thesis_step(comfy):
    from particle_repulsion.kernels import KernelSum, make_kernel, repulsion_force
    from particle_repulsion.kernels.guidance import RepulsionSettings
    from particle_repulsion.nodes.repulsion import Repulsion, repulsive_sampler

    alpha, bandwidth = 100.0, 2000.0  # h of the order of the squared distances of 4x8x8 latents here
    sigmas = torch.tensor([4.0, 2.5, 1.5, 0.8, 0.4, 0.1])
    start = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    denoise = gaussian_denoiser(mean=0.3, data_std=0.7)
    kernel_sum = KernelSum(make_kernel("rbf", bandwidth))
    repulsion = Repulsion(RepulsionSettings(strength=alpha, strength_mode="absolute", space="noisy"), kernel_sum)
    sampler = repulsive_sampler(comfy.samplers.sampler_object("euler"), repulsion)
    with torch.inference_mode():
        sampled = sampler.sampler_function(denoise, start.clone(), sigmas, extra_args={}, callback=None, disable=True)

    expected = thesis_loop(start.clone(), sigmas, denoise, alpha,
                           lambda x: repulsion_force(x, lambda latents: latents.flatten(1), kernel_sum))
    without_repulsion = thesis_loop(start.clone(), sigmas, denoise, 0.0, torch.zeros_like)

    assert (expected - without_repulsion).abs().max() > 1e-2, "the repulsion term must matter in this setting"
    torch.testing.assert_close(sampled, expected, rtol=1e-5, atol=1e-5)
