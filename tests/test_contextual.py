"""The Contextual Repulsion node inside the real ComfyUI host, on tiny Flux and SD3 models."""
import logging

import pytest
import torch

from contextual_fixtures import (  # noqa: F401  (fixtures are used by name)
    STEPS,
    add_probe,
    chunk_entropies,
    conditioning,
    sample,
    tiny_flux,
    tiny_sd3,
    tiny_sd3_file,
    tiny_sd15,
)
from graphs import CHECKPOINT, Graph

TEXT_TOKENS = 77  # CLIP-L's context length
IMAGE_TOKENS = 16  # 8 x 8 latents in 2 x 2 patches
PROBED_BLOCK = ("double_block", 1)  # in the default middle third of both tiny models (3 and 4 blocks)
WINDOW_END = 0.5  # the first 2 of the 4 steps
STRONG = {"step_size": 0.3, "iterations": 2}


def contextual(model, step_size=0.0, iterations=2, stream="text", blocks="double", block_start=0.33,
               block_end=0.67, start=0.0, end=WINDOW_END):
    from particle_repulsion.nodes.contextual import ContextualRepulsion

    (patched,) = ContextualRepulsion().patch(model, step_size, iterations, stream, blocks, block_start, block_end,
                                             start, end)
    return patched


def log_vendi(latents: torch.Tensor) -> float:
    from particle_repulsion.kernels import log_vendi_entropy

    return log_vendi_entropy(latents.flatten(1).double()).item()


def in_window(call: dict) -> bool:
    from particle_repulsion.kernels.guidance import in_schedule_window

    return in_schedule_window(call["sigma"], call["schedule"], 0.0, WINDOW_END)


@pytest.fixture(params=["flux", "sd3"])
def tiny_dit(request):
    """ModelPatcher of each tiny diffusion transformer in turn."""
    return request.getfixturevalue(f"tiny_{request.param}")


def test_step_size_zero_is_bit_identical_to_the_unpatched_model(tiny_dit, conditioning):
    every_block = contextual(tiny_dit, 0.0, blocks="double + single", block_start=0.0, block_end=1.0, end=1.0)
    assert torch.equal(sample(every_block, conditioning, cfg=3.0), sample(tiny_dit, conditioning, cfg=3.0))


@pytest.mark.parametrize("seed", [0, 1])
def test_repulsion_raises_the_vendi_score_of_the_final_latents(tiny_dit, conditioning, seed):
    plain = sample(contextual(tiny_dit, 0.0), conditioning, cfg=3.0, seed=seed)
    repelled = sample(contextual(tiny_dit, **STRONG), conditioning, cfg=3.0, seed=seed)
    assert torch.isfinite(repelled).all()
    assert log_vendi(repelled) > log_vendi(plain)


def test_every_block_including_the_last_sd3_block_runs_with_repulsion(tiny_sd3, conditioning):
    # SD3's last joint block emits no text stream; repelling it must be skipped, not crash.
    repelled = sample(contextual(tiny_sd3, **STRONG, block_start=0.0, block_end=1.0), conditioning, cfg=3.0)
    assert torch.isfinite(repelled).all()


@pytest.fixture(scope="module", params=["flux", "sd3"])
def probed_run(request, conditioning):
    """One sampling run (cfg 3: cond and uncond in one batch) with probes on block 1's text stream just
    before and just after the node's patch. Returns (calls before, calls after)."""
    model = request.getfixturevalue(f"tiny_{request.param}")
    inner_model, before = add_probe(model, PROBED_BLOCK, "txt")
    outer_model, after = add_probe(contextual(inner_model, **STRONG), PROBED_BLOCK, "txt")
    sample(outer_model, conditioning, cfg=3.0)
    assert len(before.calls) == len(after.calls) == STEPS
    return before.calls, after.calls


def test_repulsion_acts_exactly_in_the_sigma_window(probed_run):
    inside = [in_window(call) for call in probed_run[0]]
    assert inside == [True, True, False, False]
    for before, after in zip(*probed_run):
        changed = not torch.equal(before["stream"], after["stream"])
        assert changed == in_window(before)


def test_repulsion_raises_the_vendi_score_of_the_context_features(probed_run):
    for before, after in zip(*probed_run):
        if in_window(before):
            chunk_count = len(before["chunks"])
            raised = zip(chunk_entropies(after["stream"], chunk_count), chunk_entropies(before["stream"], chunk_count))
            assert all(entropy_after > entropy_before for entropy_after, entropy_before in raised)


def test_cond_and_uncond_are_repelled_separately(probed_run):
    from particle_repulsion.kernels.contextual import ContextualSettings, repel_streams

    settings = ContextualSettings(**STRONG, end=WINDOW_END)
    for before, after in zip(*probed_run):
        if not in_window(before):
            continue
        assert sorted(before["chunks"]) == [0, 1], "cfg > 1 must put cond and uncond in one model call here"
        per_chunk = torch.cat([repel_streams(chunk, settings) for chunk in before["stream"].chunk(2)])
        mixed = repel_streams(before["stream"], settings)
        assert torch.equal(after["stream"], per_chunk)
        assert not torch.allclose(after["stream"], mixed, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stream, moved, kept", [("text", "joint_text", "joint_image"),
                                                 ("image", "joint_image", "joint_text")])
def test_flux_single_blocks_repel_the_chosen_part_of_the_joint_stream(tiny_flux, conditioning, stream, moved, kept):
    block, model, probes = ("single_block", 0), tiny_flux, {}
    for key in (moved, kept):
        model, probes[("before", key)] = add_probe(model, block, key, TEXT_TOKENS)
    model = contextual(model, **STRONG, stream=stream, blocks="double + single", block_start=0.0, block_end=1.0)
    for key in (moved, kept):
        model, probes[("after", key)] = add_probe(model, block, key, TEXT_TOKENS)
    sample(model, conditioning, cfg=1.0)

    first_before, first_after = probes[("before", moved)].calls[0], probes[("after", moved)].calls[0]
    assert first_before["stream"].shape[1] == (TEXT_TOKENS if stream == "text" else IMAGE_TOKENS)
    assert chunk_entropies(first_after["stream"], 1)[0] > chunk_entropies(first_before["stream"], 1)[0]
    for untouched_before, untouched_after in zip(probes[("before", kept)].calls, probes[("after", kept)].calls):
        assert torch.equal(untouched_before["stream"], untouched_after["stream"])


class HalveImageStream:
    """A third-party block patch already on the model: halves the image stream and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args, extra):
        self.calls += 1
        output = extra["original_block"](args)
        return {**output, "img": output["img"] * 0.5}


def test_the_patch_chains_with_a_block_patch_already_on_the_model(tiny_flux, conditioning):
    from particle_repulsion.nodes.contextual import DoubleBlockPatch

    existing = HalveImageStream()
    with_existing = tiny_flux.clone()
    with_existing.set_model_patch_replace(existing, "dit", *PROBED_BLOCK)
    existing_only = sample(with_existing, conditioning, cfg=1.0)
    calls_per_run = existing.calls
    chained_off = sample(contextual(with_existing, 0.0), conditioning, cfg=1.0)
    chained_on = contextual(with_existing, **STRONG)
    repelled = sample(chained_on, conditioning, cfg=1.0)

    installed = chained_on.model_options["transformer_options"]["patches_replace"]["dit"][PROBED_BLOCK]
    assert isinstance(installed, DoubleBlockPatch) and installed.previous_patch is existing
    assert calls_per_run == STEPS and existing.calls == 3 * STEPS  # the existing patch ran in every run
    assert not torch.equal(existing_only, sample(tiny_flux, conditioning, cfg=1.0))
    assert torch.equal(chained_off, existing_only)  # its effect is kept, bit for bit
    assert not torch.allclose(repelled, existing_only)  # and ours acted on top of it


def test_the_patch_lives_on_a_clone(tiny_flux):
    contextual(tiny_flux, **STRONG)
    assert "patches_replace" not in tiny_flux.model_options["transformer_options"]


def test_a_batch_of_one_skips_with_a_warning(tiny_flux, conditioning, caplog):
    with caplog.at_level(logging.WARNING, logger="particle_repulsion"):
        repelled = sample(contextual(tiny_flux, **STRONG), conditioning, cfg=3.0, batch=1)
    assert torch.equal(repelled, sample(tiny_flux, conditioning, cfg=3.0, batch=1))
    assert "batch has one image" in caplog.text


def test_a_unet_model_is_refused_with_a_pointer_to_the_repulsive_sampler(tiny_sd15):
    from particle_repulsion.nodes.contextual import UnsupportedModel

    with pytest.raises(UnsupportedModel, match="Repulsive Sampler"):
        contextual(tiny_sd15[0], **STRONG)


def test_an_empty_block_range_is_refused(tiny_sd3):
    with pytest.raises(ValueError, match="widen block_start/block_end"):
        contextual(tiny_sd3, **STRONG, block_start=0.5, block_end=0.5)


def test_on_the_server_sd3_through_unet_loader(server, tiny_checkpoint, tiny_sd3_file):
    graph = Graph(tiny_checkpoint, batch_size=4, cfg=3.0)
    graph.add("sd3", "UNETLoader", unet_name=tiny_sd3_file, weight_dtype="default")
    node_inputs = {"model": ["sd3", 0], "iterations": 2, "stream": "text", "blocks": "double",
                   "block_start": 0.33, "block_end": 0.67, "start": 0.0, "end": WINDOW_END}
    graph.add("off", "ParticleRepulsionContextual", step_size=0.0, **node_inputs)
    graph.add("on", "ParticleRepulsionContextual", step_size=STRONG["step_size"], **node_inputs)
    stock = graph.save_latent(graph.stock_ksampler("stock", steps=STEPS, model="sd3"))
    off = graph.save_latent(graph.stock_ksampler("sampled_off", steps=STEPS, model="off"))
    on = graph.save_latent(graph.stock_ksampler("sampled_on", steps=STEPS, model="on"))
    result = server.run(graph.nodes)
    assert torch.equal(result.latents(off), result.latents(stock))
    assert log_vendi(result.latents(on)) > log_vendi(result.latents(stock))

    unet_graph = Graph(tiny_checkpoint, batch_size=2)
    unet_graph.add("refused", "ParticleRepulsionContextual", step_size=0.3, **{**node_inputs, "model": [CHECKPOINT, 0]})
    unet_graph.save_latent(unet_graph.stock_ksampler("unet", model="refused"))
    assert "Repulsive Sampler" in server.run_expecting_error(unet_graph.nodes)
