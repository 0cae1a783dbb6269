"""Benchmark: mode coverage at equal quality on a Gaussian mixture whose exact denoiser is known.

Data: K = 8 equally likely Gaussians N(mu_k, s^2 I) in a latent-shaped space [4, 8, 8], s = 0.5, with
smooth random means (bilinear from 4x4) scaled so every element has unit variance (the data variance
ComfyUI's SD1.5 noise scaling assumes). Its optimal denoiser E[x0 | x, sigma] is closed-form; it becomes a
ComfyUI MODEL (`common.denoiser_model`) and every batch is sampled through `comfy.sample.sample_custom`
with a built-in sampler, wrapped in the pack's Repulsive Sampler for the repulsive methods.

Per batch: modes covered (distinct most-likely components of the final samples), mean log-likelihood per
sample under the mixture (nats; quality), and the Vendi score (cosine kernel on the flattened latents).
Means over seeds (the same seeds for every method); the Pareto figure averages over samplers.

    .host/venv/bin/python benchmarks/bench_diversity_gmm.py [--seeds 16] [--threads 1]

Writes benchmarks/results/gmm.json, gmm.md and gmm_pareto.png.
"""
from __future__ import annotations

import json
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import (IID, Bench, ClassProbabilities, CollisionKernel, Method, ModuleRecipe, Panel,
                    ParticleGuidanceKernel, add_change_vs_iid, best_within, denoiser_model, markdown_table,
                    method_family, over_samplers, parse_arguments, schedule, series_by_family, write_results)
from particle_repulsion.kernels.guidance import RepulsionSettings
from particle_repulsion.metrics import vendi_score
from particle_repulsion.nodes.embedder_recipes import BuiltinEmbedderRecipe

COMPONENTS = 8
LATENT_SHAPE = (4, 8, 8)
COMPONENT_STD = 0.5
MIXTURE_SEED = 1234
BATCH_SIZES = (4, 8, 16)
SAMPLERS = ("euler", "euler_ancestral", "heun", "dpmpp_2m")
FIGURES = ("modes", "log_likelihood", "vendi")
TARGET_BATCH = 8
TARGET_MODES = 7.5
TARGET_LIKELIHOOD_LOSS = 0.05  # at most 5% lower (more negative) mean log-likelihood than i.i.d.


class GaussianMixture(nn.Module):
    """Equally weighted isotropic Gaussians N(mu_k, std^2 I) over latents [C, H, W]; maths in float64."""

    def __init__(self, components: int, shape: tuple[int, int, int], std: float, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        coarse = torch.randn(components, shape[0], 4, 4, generator=generator, dtype=torch.float64)
        means = F.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False)
        element_rms = means.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
        self.register_buffer("means", means / element_rms * math.sqrt(1 - std**2))
        self.std = std

    def log_components(self, latents: Tensor, extra_variance: Tensor) -> Tensor:
        """log(w_k N(x; mu_k, (std^2 + extra) I)) [N, K] for latents [N, C, H, W], extra variance [N]."""
        variance = (self.std**2 + extra_variance.double()).reshape(-1, 1)
        dimensions = latents[0].numel()
        squared = torch.cdist(latents.flatten(1).double(), self.means.flatten(1)).square()
        return (-0.5 * squared / variance - 0.5 * dimensions * torch.log(2 * math.pi * variance)
                - math.log(self.means.shape[0]))

    def denoise(self, noisy: Tensor, sigma: Tensor) -> Tensor:
        """The exact E[x0 | x = x0 + sigma n] [N, C, H, W] for noise levels sigma [N]."""
        variance = self.std**2 + sigma.double() ** 2
        responsibilities = torch.softmax(self.log_components(noisy, sigma.double() ** 2), dim=1)
        posterior_mean = torch.einsum("nk,kd->nd", responsibilities, self.means.flatten(1)).view(noisy.shape)
        shrink = (self.std**2 / variance).view(-1, 1, 1, 1)
        return (posterior_mean + shrink * (noisy.double() - posterior_mean)).to(noisy.dtype)

    def logits(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        """The exact classifier: log posterior of the component [N, K] (float32) given noisy latents."""
        extra = torch.zeros(latents.shape[0]) if sigma is None else sigma.detach().double() ** 2
        return torch.log_softmax(self.log_components(latents, extra), dim=1).float()

    def log_likelihood(self, samples: Tensor) -> Tensor:
        """log p(x) [N] of clean samples, in nats."""
        return torch.logsumexp(self.log_components(samples, torch.zeros(samples.shape[0])), dim=1)

    def modes(self, samples: Tensor) -> Tensor:
        """The most likely component [N] of each sample."""
        return self.log_components(samples, torch.zeros(samples.shape[0])).argmax(dim=1)


def methods(mixture: GaussianMixture) -> list[Method]:
    """i.i.d. and every repulsion family, each at three strengths. The pack's repulsion acts over the first 40%
    of the steps (this mixture's modes are settled at the highest noise levels); Particle Guidance acts over
    all of them, as in its paper."""
    posterior = ModuleRecipe("exact posterior", ClassProbabilities(mixture.logits))
    pooled = BuiltinEmbedderRecipe("pooled_grid", grid_size=4)
    early = dict(start=0.0, end=0.4)
    return [
        IID,
        *method_family("latent RBF on x (pack default space)", (0.01, 0.02, 0.05),
                       lambda s: RepulsionSettings(s, **early)),
        *method_family("latent RBF on D", (0.01, 0.02, 0.05),
                       lambda s: RepulsionSettings(s, space="denoised", **early)),
        *method_family("pooled 4x4 RBF on D", (0.02, 0.05, 0.1),
                       lambda s: RepulsionSettings(s, space="denoised", **early), recipe=pooled),
        *method_family("posterior RBF on x", (0.02, 0.05, 0.1), lambda s: RepulsionSettings(s, **early),
                       recipe=posterior),
        *method_family("posterior collision on x", (0.05, 0.1, 0.2), lambda s: RepulsionSettings(s, **early),
                       recipe=posterior, kernel=CollisionKernel()),
        *method_family("Particle Guidance on x", (10, 30, 100),
                       lambda a: RepulsionSettings(a, strength_mode="absolute"), kernel=ParticleGuidanceKernel()),
    ]


def batch_figures(mixture: GaussianMixture, samples: Tensor) -> dict:
    return {"modes": mixture.modes(samples).unique().numel(),
            "log_likelihood": mixture.log_likelihood(samples).mean().item(),
            "vendi": vendi_score(samples.flatten(1))}


def table(rows: list[dict]) -> str:
    return markdown_table(
        ["N", "sampler", "method", "strength", "modes", "log-lik", "Δ log-lik %", "Vendi", "ms/batch"],
        [[row["n"], row["sampler"], row["family"], row["setting"], f"{row['modes']:.2f}",
          f"{row['log_likelihood']:.1f}", f"{row['log_likelihood_change_pct']:+.1f}", f"{row['vendi']:.2f}",
          f"{row['ms_per_batch']:.0f}"] for row in rows])


def pareto_panels(averaged: list[dict]) -> list[Panel]:
    return [Panel(f"N = {batch_size}, {COMPONENTS} modes (mean of {len(SAMPLERS)} samplers)",
                  "log-likelihood change vs i.i.d. (%)", "modes covered",
                  series_by_family(averaged, batch_size, "log_likelihood_change_pct", "modes"),
                  (("x", -100 * TARGET_LIKELIHOOD_LOSS), ("y", TARGET_MODES)) if batch_size == TARGET_BATCH else ())
            for batch_size in BATCH_SIZES]


def main() -> None:
    arguments = parse_arguments(__doc__.split("\n", 1)[0], default_seeds=16)
    started = time.perf_counter()
    mixture = GaussianMixture(COMPONENTS, LATENT_SHAPE, COMPONENT_STD, MIXTURE_SEED)
    model = denoiser_model(mixture.denoise)
    bench = Bench(model, schedule(model), LATENT_SHAPE, lambda samples: batch_figures(mixture, samples), FIGURES)
    rows = [bench.measure(method, sampler_name, batch_size, arguments.seeds)
            for batch_size in BATCH_SIZES for sampler_name in SAMPLERS for method in methods(mixture)]
    add_change_vs_iid(rows, "log_likelihood")
    averaged = over_samplers(rows, FIGURES + ("log_likelihood_change_pct", "ms_per_batch"))
    best = best_within(averaged, TARGET_BATCH, "modes", "log_likelihood_change_pct", -100 * TARGET_LIKELIHOOD_LOSS)
    iid = next(row for row in averaged if row["n"] == TARGET_BATCH and row["family"] == IID.family)
    verdict = {"batch_size": TARGET_BATCH, "iid_modes": iid["modes"], "best_within_quality": best,
               "target_modes": TARGET_MODES, "met": best["modes"] >= TARGET_MODES}
    seconds = time.perf_counter() - started
    print(table([row for row in averaged if row["n"] == TARGET_BATCH]))
    print(json.dumps(verdict, indent=2))
    print(f"total {seconds:.0f} s")
    write_results("gmm", {
        "threads": arguments.threads, "seeds": arguments.seeds, "seconds": seconds,
        "mixture": {"components": COMPONENTS, "shape": LATENT_SHAPE, "std": COMPONENT_STD, "seed": MIXTURE_SEED},
        "samplers": SAMPLERS, "steps": len(bench.sigmas) - 1, "verdict": verdict, "averaged": averaged,
        "rows": rows}, {"Averaged over samplers": table(averaged), "Per sampler": table(rows)},
        pareto_panels(averaged))


if __name__ == "__main__":
    main()
