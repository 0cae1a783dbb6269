"""The Repulsive KSampler, SAMPLER and model patch, run on the real ComfyUI server with the tiny checkpoint."""
import itertools

import pytest
import torch

from contextual_fixtures import tiny_sd3_file  # noqa: F401  (a fixture, used by name)
from graphs import CHECKPOINT, LATENT, REPULSION_DEFAULTS, Graph

SCHEDULERS = ("normal", "karras")
DIVERSITY_SAMPLERS = ("euler_ancestral", "dpmpp_sde", "dpmpp_2m", "uni_pc", "ddim", "lcm", "dpm_adaptive")


def mean_pairwise_distance(latents: torch.Tensor) -> float:
    flat = latents.flatten(1).double()
    return torch.pdist(flat).mean().item()


def test_strength_zero_is_bit_identical_to_stock_for_every_sampler(server, tiny_checkpoint, comfy):
    graph = Graph(tiny_checkpoint, batch_size=4)
    pairs = {}
    for sampler_name, scheduler in itertools.product(comfy.samplers.KSampler.SAMPLERS, SCHEDULERS):
        stock = graph.save_latent(graph.stock_ksampler(f"stock_{sampler_name}_{scheduler}", sampler_name, scheduler))
        ours = graph.save_latent(graph.repulsive_ksampler(f"ours_{sampler_name}_{scheduler}", sampler_name,
                                                          scheduler, strength=0.0))
        pairs[(sampler_name, scheduler)] = (stock, ours)
    result = server.run(graph.nodes, timeout=1200)
    differing = [key for key, (stock, ours) in pairs.items()
                 if not torch.equal(result.latents(stock), result.latents(ours))]
    assert differing == []


FLOW_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_sde", "uni_pc", "lcm")
FLOW_SCHEDULERS = ("simple", "sgm_uniform")


def test_strength_zero_is_bit_identical_to_stock_on_a_flow_model(server, tiny_checkpoint, tiny_sd3_file):
    graph = Graph(tiny_checkpoint, batch_size=3)
    graph.add("sd3", "UNETLoader", unet_name=tiny_sd3_file, weight_dtype="default")
    pairs = {}
    for sampler_name, scheduler in itertools.product(FLOW_SAMPLERS, FLOW_SCHEDULERS):
        key = f"{sampler_name}_{scheduler}"
        stock = graph.save_latent(graph.stock_ksampler(f"stock_flow_{key}", sampler_name, scheduler, model="sd3"))
        ours = graph.save_latent(graph.repulsive_ksampler(f"ours_flow_{key}", sampler_name, scheduler, model="sd3",
                                                          strength=0.0))
        pairs[key] = (stock, ours)
    repelled = graph.save_latent(graph.repulsive_ksampler("repelled_flow", model="sd3", strength=1.0))
    result = server.run(graph.nodes)
    differing = [key for key, (stock, ours) in pairs.items()
                 if not torch.equal(result.latents(stock), result.latents(ours))]
    assert differing == []
    assert result.latents(repelled).shape[1] == 16  # the SD3 latent, as the stock KSampler makes it
    assert not torch.equal(result.latents(repelled), result.latents(pairs["euler_simple"][0]))


def test_api_prompts_written_before_the_objective_input_still_run_with_its_default(server, tiny_checkpoint):
    graph = Graph(tiny_checkpoint, batch_size=3)
    explicit = graph.save_latent(graph.repulsive_ksampler("explicit", strength=1.0, objective="log_vendi"))
    older = graph.repulsive_ksampler("older", strength=1.0)
    del graph.nodes[older]["inputs"]["objective"]
    older = graph.save_latent(older)
    result = server.run(graph.nodes)
    assert torch.equal(result.latents(explicit), result.latents(older))


@pytest.mark.parametrize("sampler_name", DIVERSITY_SAMPLERS)
def test_repulsion_raises_the_batch_spread(server, tiny_checkpoint, sampler_name):
    graph = Graph(tiny_checkpoint, batch_size=4)
    plain = graph.save_latent(graph.repulsive_ksampler(f"plain_{sampler_name}", sampler_name, strength=0.0, steps=4))
    repelled = graph.save_latent(graph.repulsive_ksampler(f"repelled_{sampler_name}", sampler_name, strength=0.5, steps=4))
    result = server.run(graph.nodes)
    plain_latents, repelled_latents = result.latents(plain), result.latents(repelled)
    assert torch.isfinite(repelled_latents).all()
    assert mean_pairwise_distance(repelled_latents) > mean_pairwise_distance(plain_latents)


def test_embedder_space_spread_rises_with_channel_mean(server, tiny_checkpoint):
    graph = Graph(tiny_checkpoint, batch_size=4)
    embedder = graph.add("embedder", "ParticleRepulsionEmbedder", embedder="channel_mean", seed=0, grid_size=4)
    plain = graph.save_latent(graph.repulsive_ksampler("plain_mean", strength=0.0, steps=4))
    repelled = graph.save_latent(graph.repulsive_ksampler("repelled_mean", strength=0.5, steps=4, embedder=embedder))
    result = server.run(graph.nodes)
    channel_means = [result.latents(node).mean(dim=(2, 3)) for node in (plain, repelled)]
    assert mean_pairwise_distance(channel_means[1]) > mean_pairwise_distance(channel_means[0])


def test_batch_of_one_skips_repulsion_with_a_warning(server, tiny_checkpoint):
    graph = Graph(tiny_checkpoint, batch_size=1)
    stock = graph.save_latent(graph.stock_ksampler("stock_single", seed=11))
    ours = graph.save_latent(graph.repulsive_ksampler("ours_single", seed=11, strength=0.5))
    result = server.run(graph.nodes)
    assert torch.equal(result.latents(stock), result.latents(ours))
    assert "batch has one image" in server.log_text()


def test_inpainting_leaves_the_unmasked_region_as_stock(server, tiny_checkpoint):
    graph = Graph(tiny_checkpoint, batch_size=4)
    graph.add("keep_all", "SolidMask", value=0.0, width=64, height=64)
    graph.add("repaint_right", "SolidMask", value=1.0, width=32, height=64)
    graph.add("mask", "MaskComposite", destination=["keep_all", 0], source=["repaint_right", 0], x=32, y=0,
              operation="add")
    graph.add("masked_latent", "SetLatentNoiseMask", samples=[LATENT, 0], mask=["mask", 0])
    stock = graph.save_latent(graph.stock_ksampler("stock_inpaint", latent="masked_latent"))
    ours = graph.save_latent(graph.repulsive_ksampler("ours_inpaint", latent="masked_latent", strength=0.5))
    result = server.run(graph.nodes)
    stock_latents, our_latents = result.latents(stock), result.latents(ours)
    kept = slice(0, 3)  # latent columns 0-2 lie wholly in the unmasked left half (8 latent columns in all)
    assert torch.equal(stock_latents[..., kept], our_latents[..., kept])
    assert not torch.allclose(stock_latents[..., 5:], our_latents[..., 5:])


def test_model_patch_and_sampler_node_match_the_repulsive_ksampler(server, tiny_checkpoint):
    repulsion = {**REPULSION_DEFAULTS, "strength": 0.4}
    graph = Graph(tiny_checkpoint, batch_size=4)
    reference = graph.save_latent(graph.repulsive_ksampler("reference", sampler_name="dpmpp_2m", **repulsion))
    graph.add("patched_model", "ParticleRepulsionModelPatch", model=[CHECKPOINT, 0], **repulsion)
    patched = graph.save_latent(graph.stock_ksampler("patched", sampler_name="dpmpp_2m", model="patched_model"))
    graph.add("base_sampler", "KSamplerSelect", sampler_name="dpmpp_2m")
    graph.add("wrapped_sampler", "ParticleRepulsionSampler", sampler=["base_sampler", 0], **repulsion)
    graph.add("sigmas", "BasicScheduler", model=[CHECKPOINT, 0], scheduler="normal", steps=3, denoise=1.0)
    graph.add("custom", "SamplerCustom", model=[CHECKPOINT, 0], add_noise=True, noise_seed=7, cfg=5.0,
              positive=["positive", 0], negative=["negative", 0], sampler=["wrapped_sampler", 0],
              sigmas=["sigmas", 0], latent_image=[LATENT, 0])
    custom = graph.save_latent("custom")
    plain = graph.save_latent(graph.stock_ksampler("plain", sampler_name="dpmpp_2m"))
    result = server.run(graph.nodes)
    expected = result.latents(reference)
    assert not torch.allclose(result.latents(plain), expected)
    torch.testing.assert_close(result.latents(patched), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.latents(custom), expected, rtol=1e-5, atol=1e-5)
