"""NaN made or fed to the repulsion sampling nodes is refused, naming the real culprit.

ComfyUI checks a FLOAT input only against its min and max, and NaN compares false with both, so
`strength: NaN` used to pass and turn the batch into NaN. A non-finite push computed by the pack itself (an
embedder gone wrong) used to surface one step later as "the sampler's latent contains NaN ... check the
input latent", blaming the user.
"""
import math

import pytest
import torch
from torch import nn

from graphs import CHECKPOINT, REPULSION_DEFAULTS, Graph


@pytest.mark.parametrize("name", ["strength", "bandwidth", "end", "cfg"])
def test_a_nan_input_of_the_repulsive_ksampler_is_refused_by_name(server, tiny_checkpoint, name):
    graph = Graph(tiny_checkpoint, batch_size=2)
    if name == "cfg":
        graph.cfg = math.nan
    graph.save_latent(graph.repulsive_ksampler("refused", **{"strength": 0.5, name: math.nan}))
    message = server.run_expecting_error(graph.nodes)
    assert f"The input {name} is" in message

    good = Graph(tiny_checkpoint, batch_size=2)
    saved = good.save_latent(good.repulsive_ksampler("after", strength=0.5))
    assert torch.isfinite(server.run(good.nodes).latents(saved)).all()


@pytest.mark.parametrize("node_type, base", [("ParticleRepulsionSampler", "sampler"),
                                             ("ParticleRepulsionModelPatch", "model")])
def test_the_other_repulsion_nodes_refuse_nan_strength_too(server, tiny_checkpoint, node_type, base):
    graph = Graph(tiny_checkpoint, batch_size=2)
    graph.add("base_sampler", "KSamplerSelect", sampler_name="euler")
    source = ["base_sampler", 0] if base == "sampler" else [CHECKPOINT, 0]
    graph.add("refused", node_type, **{base: source}, **{**REPULSION_DEFAULTS, "strength": math.nan})
    graph.add("preview", "PreviewAny", source=["refused", 0])
    assert "The input strength is nan" in server.run_expecting_error(graph.nodes)


class BrokenEmbedder(nn.Module):
    """An embedder whose features are NaN (as a style embedder with broken weights would give)."""

    def forward(self, latents, sigma=None):
        return latents.flatten(1) * torch.tensor(math.nan)


class BrokenRecipe:
    label = "broken"

    def build(self, latent_channels, latent_format):
        return BrokenEmbedder()


def test_a_non_finite_push_is_blamed_on_the_embedder_not_on_the_latent(comfy):
    from particle_repulsion.nodes.repulsion import Repulsion
    from particle_repulsion.nodes.sampler_nodes import build_repulsion

    repulsion: Repulsion = build_repulsion(strength=1.0, strength_mode="relative", space="denoised", kernel="rbf",
                                           bandwidth=0.0, start=0.0, end=1.0, embedder=BrokenRecipe())
    generator = torch.Generator().manual_seed(0)
    denoised, x = torch.randn(3, 4, 8, 8, generator=generator), 5 * torch.randn(3, 4, 8, 8, generator=generator)
    with pytest.raises(ValueError, match="push computed in the broken embedder's space is NaN or infinite") as raised:
        repulsion.apply(denoised, x, torch.full((3,), 5.0), None, None, None)
    assert "the latent is fine" in str(raised.value)
