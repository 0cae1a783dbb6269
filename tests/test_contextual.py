"""The Contextual Repulsion node inside the real ComfyUI host, on a tiny model of every supported family."""
import logging

import pytest
import torch

from contextual_fixtures import (  # noqa: F401  (fixtures are used by name)
    STEPS,
    TINY_FAMILIES,
    add_probe,
    chunk_entropies,
    conditioning,
    sample,
    spec_of,
    tiny_dit,
    tiny_flux,
    tiny_joint_dit,
    tiny_sd3,
    tiny_sd3_file,
    tiny_sd15,
)
from graphs import CHECKPOINT, Graph

PROBED_BLOCK = 1  # the double block in the default middle third of every tiny model (3 or 4 blocks)
WINDOW_END = 0.5  # the first 2 of the 4 steps
STRONG = {"step_size": 0.3, "iterations": 2}
# Every block, the whole schedule, a large step: tiny random models pass little of a text stream's change on
# to the image, so the final latents show the spread only at full force.
SPREADING = {"step_size": 1.0, "iterations": 4, "blocks": "double + single", "block_start": 0.0, "block_end": 1.0,
             "end": 1.0}
NEAR_COPIES = 0.1  # the batch's noise: a shared draw plus 0.1 times each sample's own


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


def test_every_family_of_the_node_is_present_on_this_comfyui(comfy):
    from particle_repulsion.nodes.contextual import FAMILIES

    missing = [family.name for family in FAMILIES if family.network_class() is None]
    assert not missing, f"this ComfyUI lacks the network class of {missing}"
    tested = {spec_of(tiny).family for tiny in TINY_FAMILIES}
    assert {family.name for family in FAMILIES} == tested


def test_each_tiny_model_is_recognised_as_its_family(tiny_dit):
    from particle_repulsion.nodes.contextual import model_family

    assert model_family(tiny_dit.model).name == tiny_dit.spec.family


def test_step_size_zero_is_bit_identical_to_the_unpatched_model(tiny_dit, conditioning):
    every_block = contextual(tiny_dit.model, 0.0, blocks="double + single", block_start=0.0, block_end=1.0, end=1.0)
    family_conditioning = tiny_dit.conditioning(conditioning)
    assert torch.equal(sample(every_block, family_conditioning, cfg=3.0),
                       sample(tiny_dit.model, family_conditioning, cfg=3.0))


@pytest.mark.parametrize("seed", [0, 1])
def test_repulsion_spreads_a_batch_of_near_copies(tiny_dit, conditioning, seed):
    family_conditioning = tiny_dit.conditioning(conditioning)
    plain = sample(tiny_dit.model, family_conditioning, cfg=3.0, seed=seed, spread=NEAR_COPIES)
    repelled = sample(contextual(tiny_dit.model, **SPREADING), family_conditioning, cfg=3.0, seed=seed,
                      spread=NEAR_COPIES)
    assert torch.isfinite(repelled).all()
    assert log_vendi(repelled) > log_vendi(plain) + 0.01  # measured gains: 0.03 to 0.5


def test_every_block_including_the_last_sd3_block_runs_with_repulsion(tiny_sd3, conditioning):
    # SD3's last joint block emits no text stream; repelling it must be skipped, not crash.
    repelled = sample(contextual(tiny_sd3, **STRONG, block_start=0.0, block_end=1.0), conditioning, cfg=3.0)
    assert torch.isfinite(repelled).all()


@pytest.fixture(scope="module")
def probed_run(tiny_dit, conditioning):
    """One sampling run (cfg 3: cond and uncond in one batch) with probes on the text stream of double
    block 1 just before and just after the node's repulsion. Returns (calls before, calls after)."""
    inner_model, before = add_probe(tiny_dit.model, "double", PROBED_BLOCK)
    outer_model, after = add_probe(contextual(inner_model, **STRONG), "double", PROBED_BLOCK)
    sample(outer_model, tiny_dit.conditioning(conditioning), cfg=3.0)
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


@pytest.mark.parametrize("stream", ["text", "image"])
def test_joint_blocks_repel_exactly_the_chosen_part_of_the_joint_stream(tiny_joint_dit, conditioning, stream):
    """The joint stream, recorded whole around the first joint block, is split here by the known token
    counts of the tiny model and its conditioning, independently of the node's own split."""
    from particle_repulsion.nodes.contextual import Slot, model_family

    spec, blocks = tiny_joint_dit.spec, tiny_joint_dit.spec.joint_blocks
    whole_stream = Slot(getattr(model_family(tiny_joint_dit.model), blocks).text.key)
    model, before = add_probe(tiny_joint_dit.model, blocks, 0, whole_stream)
    model = contextual(model, **STRONG, stream=stream, blocks="double + single", block_start=0.0, block_end=1.0)
    model, after = add_probe(model, blocks, 0, whole_stream)
    sample(model, tiny_joint_dit.conditioning(conditioning), cfg=1.0)

    order = list(spec.joint_tokens)
    assert before.calls[0]["stream"].shape[1] == sum(spec.joint_tokens.values())
    for call_before, call_after in zip(before.calls, after.calls):
        parts_before = dict(zip(order, call_before["stream"].split(list(spec.joint_tokens.values()), dim=1)))
        parts_after = dict(zip(order, call_after["stream"].split(list(spec.joint_tokens.values()), dim=1)))
        kept = "image" if stream == "text" else "text"
        assert torch.equal(parts_before[kept], parts_after[kept])
        if in_window(call_before):
            assert chunk_entropies(parts_after[stream], 1)[0] > chunk_entropies(parts_before[stream], 1)[0]
        else:
            assert torch.equal(parts_before[stream], parts_after[stream])


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
    from particle_repulsion.nodes.contextual import ChainedBlockPatch

    block = ("double_block", PROBED_BLOCK)
    existing = HalveImageStream()
    with_existing = tiny_flux.clone()
    with_existing.set_model_patch_replace(existing, "dit", *block)
    existing_only = sample(with_existing, conditioning, cfg=1.0)
    calls_per_run = existing.calls
    chained_off = sample(contextual(with_existing, 0.0), conditioning, cfg=1.0)
    chained_on = contextual(with_existing, **STRONG)
    repelled = sample(chained_on, conditioning, cfg=1.0)

    installed = chained_on.model_options["transformer_options"]["patches_replace"]["dit"][block]
    assert isinstance(installed, ChainedBlockPatch) and installed.previous_patch is existing
    assert calls_per_run == STEPS and existing.calls == 3 * STEPS  # the existing patch ran in every run
    assert not torch.equal(existing_only, sample(tiny_flux, conditioning, cfg=1.0))
    assert torch.equal(chained_off, existing_only)  # its effect is kept, bit for bit
    assert not torch.allclose(repelled, existing_only)  # and ours acted on top of it


def test_the_patch_lives_on_a_clone(tiny_dit):
    untouched = repr(tiny_dit.model.model_options), repr(tiny_dit.model.wrappers)
    patched = contextual(tiny_dit.model, **STRONG)
    assert (repr(tiny_dit.model.model_options), repr(tiny_dit.model.wrappers)) == untouched
    assert (repr(patched.model_options), repr(patched.wrappers)) != untouched


def test_forward_hooks_last_one_model_call_and_leave_the_shared_network_plain(tiny_dit, conditioning):
    family_conditioning = tiny_dit.conditioning(conditioning)
    plain_before = sample(tiny_dit.model, family_conditioning, cfg=1.0)
    sample(contextual(tiny_dit.model, **SPREADING), family_conditioning, cfg=1.0)
    hooked = [name for name, module in tiny_dit.model.model.diffusion_model.named_modules() if module._forward_hooks]
    assert not hooked
    assert torch.equal(sample(tiny_dit.model, family_conditioning, cfg=1.0), plain_before)


def test_a_batch_of_one_skips_with_a_warning(tiny_flux, conditioning, caplog):
    with caplog.at_level(logging.WARNING, logger="particle_repulsion"):
        repelled = sample(contextual(tiny_flux, **STRONG), conditioning, cfg=3.0, batch=1)
    assert torch.equal(repelled, sample(tiny_flux, conditioning, cfg=3.0, batch=1))
    assert "batch has one image" in caplog.text


def test_a_unet_model_is_refused_with_a_pointer_to_the_repulsive_sampler(tiny_sd15):
    from particle_repulsion.nodes.contextual import UnsupportedModel

    with pytest.raises(UnsupportedModel, match="Repulsive Sampler"):
        contextual(tiny_sd15[0], **STRONG)


def test_an_unsupported_transformer_family_is_refused_by_name(comfy):
    import tiny_transformers

    from particle_repulsion.nodes.contextual import UnsupportedModel

    with pytest.raises(UnsupportedModel, match="does not support AuraFlow models .*it supports Flux"):
        contextual(tiny_transformers.load(tiny_transformers.AURAFLOW), **STRONG)


def test_an_empty_block_range_is_refused(tiny_sd3):
    with pytest.raises(ValueError, match="widen block_start/block_end"):
        contextual(tiny_sd3, **STRONG, block_start=0.5, block_end=0.5)


def test_on_the_server_sd3_through_unet_loader(server, tiny_checkpoint, tiny_sd3_file):
    graph = Graph(tiny_checkpoint, batch_size=4, cfg=3.0)
    graph.add("sd3", "UNETLoader", unet_name=tiny_sd3_file, weight_dtype="default")
    node_inputs = {"model": ["sd3", 0], "stream": "text", "start": 0.0,
                   **{name: value for name, value in SPREADING.items() if name != "step_size"}}
    graph.add("off", "ParticleRepulsionContextual", step_size=0.0, **node_inputs)
    graph.add("on", "ParticleRepulsionContextual", step_size=SPREADING["step_size"], **node_inputs)
    stock = graph.save_latent(graph.stock_ksampler("stock", steps=STEPS, model="sd3"))
    off = graph.save_latent(graph.stock_ksampler("sampled_off", steps=STEPS, model="off"))
    on = graph.save_latent(graph.stock_ksampler("sampled_on", steps=STEPS, model="on"))
    result = server.run(graph.nodes)
    assert torch.equal(result.latents(off), result.latents(stock))
    assert log_vendi(result.latents(on)) > log_vendi(result.latents(stock)) + 0.005  # measured: about 0.02

    unet_graph = Graph(tiny_checkpoint, batch_size=2)
    unet_graph.add("refused", "ParticleRepulsionContextual", step_size=0.3, **{**node_inputs, "model": [CHECKPOINT, 0]})
    unet_graph.save_latent(unet_graph.stock_ksampler("unet", model="refused"))
    assert "Repulsive Sampler" in server.run_expecting_error(unet_graph.nodes)
