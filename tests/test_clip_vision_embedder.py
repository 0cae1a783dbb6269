"""CLIP Vision Embedder: gradients from CLIP's image embedding back to the latent, decoder choice, and the
node inside the real ComfyUI server (tiny ViT-L CLIP vision, random TAESD decoder in ComfyUI's formats).

In-process tests use a real `comfy.clip_vision.ClipVisionModel` with a small config (2 layers, width 64,
56-pixel input) and random weights loaded under `torch.inference_mode()`, as ComfyUI's loader leaves them,
and a random TAESD decoder in a temporary folder registered as a `vae_approx` folder with ComfyUI's own
`folder_paths.add_model_folder_path` (the folder stays registered, empty once pytest cleans it, for the
rest of this process).
"""
import json

import pytest
import torch

from graphs import LATENT, Graph

NODE = "ParticleRepulsionCLIPVisionEmbedder"
SMALL_CLIP_CONFIG = {
    "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 64, "image_size": 56,
    "intermediate_size": 128, "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 4,
    "num_channels": 3, "num_hidden_layers": 2, "patch_size": 14, "projection_dim": 32,
    "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3],
}
PICKLE_ONLY_DECODER = "taesdxl_decoder.pth"  # SDXL's TAESD as a pickle: must never be read


def small_clip_vision(folder, config: dict):
    """A real ComfyUI CLIP_VISION object built from `config`, random weights loaded in inference mode."""
    import comfy.clip_vision

    config_file = folder / f"clip_vision_{config['model_type']}.json"
    config_file.write_text(json.dumps(config))
    with torch.inference_mode():
        clip_vision = comfy.clip_vision.ClipVisionModel(str(config_file))
        generator = torch.Generator().manual_seed(1)
        state = {name: 0.1 * torch.randn(tensor.shape, generator=generator)
                 for name, tensor in clip_vision.get_sd().items()}
        clip_vision.load_sd(state)
    return clip_vision


@pytest.fixture(scope="module")
def vae_approx(comfy, tmp_path_factory):
    """A temporary `vae_approx` folder holding a random SD1.x TAESD decoder and a pickle-only SDXL one."""
    import folder_paths
    import tiny_taesd

    folder = tmp_path_factory.mktemp("vae_approx")
    tiny_taesd.ensure_decoder(folder)
    (folder / PICKLE_ONLY_DECODER).write_bytes(b"not a pickle: reading this file is a bug")
    folder_paths.add_model_folder_path("vae_approx", str(folder))
    return folder


@pytest.fixture(scope="module")
def clip_vision(comfy, tmp_path_factory):
    return small_clip_vision(tmp_path_factory.mktemp("clip_config"), SMALL_CLIP_CONFIG)


@pytest.fixture(scope="module")
def glue(comfy, vae_approx):
    from particle_repulsion.nodes import clip_vision_embedder

    return clip_vision_embedder


def latent_format(name: str):
    import comfy.latent_formats

    return getattr(comfy.latent_formats, name)()


def node_recipe(glue, clip_vision, decoder: str, image_size: int = 0):
    """The node's EMBEDDER output, made in inference mode as ComfyUI's executor runs nodes."""
    with torch.inference_mode():
        (recipe,) = glue.CLIPVisionEmbedder().choose(clip_vision, decoder, image_size)
    return recipe


def build(recipe, channels: int = 4, format_name: str = "SD15"):
    """The embedder the repulsion node builds when sampling starts (outside inference mode)."""
    with torch.inference_mode(False):
        return recipe.build(channels, latent_format(format_name))


def latents(count: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 4, size, size, generator=torch.Generator().manual_seed(seed))


# --- gradients -----------------------------------------------------------------------------------------

def test_the_frozen_tower_gives_comfyuis_image_embeds(clip_vision):
    from particle_repulsion.embedders.clip_vision import FrozenVisionTower

    pixels = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = clip_vision.model(pixel_values=pixels)[2].float()
        with torch.inference_mode(False):
            tower = FrozenVisionTower(clip_vision.model)
    assert not any(parameter.is_inference() or parameter.requires_grad for parameter in tower.parameters())
    assert all(parameter.dtype == torch.float32 for parameter in tower.parameters())
    assert (tower.trained_image_size, tower.embedding_size) == (56, 32)
    torch.testing.assert_close(tower(pixels), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("decoder", ["taesd", "latent_rgb"])
def test_gradients_flow_from_clip_features_to_the_latents_under_inference_mode(glue, clip_vision, decoder):
    from particle_repulsion.kernels import make_objective, repulsion_force

    embedder = build(node_recipe(glue, clip_vision, decoder))
    batch = latents()
    with torch.inference_mode():  # as inside ComfyUI's sampling
        features = embedder(batch)
        force = repulsion_force(batch, embedder, make_objective("log_vendi"))
    assert features.shape == (3, 32)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(3))
    assert torch.cdist(features, features).triu(1).max() > 0  # different latents, different embeddings
    assert force.shape == batch.shape and torch.isfinite(force).all()
    assert (force.flatten(1).norm(dim=1) > 0).all()  # every sample is pushed


@pytest.mark.parametrize("decoder", ["taesd", "latent_rgb"])
def test_gradients_match_finite_differences_in_float64(glue, clip_vision, decoder):
    # a recipe of its own: converting its tower to float64 must not touch the other tests' copy
    embedder = build(node_recipe(glue, clip_vision, decoder, image_size=28)).double()
    batch = latents(count=2, size=4, seed=3).double().requires_grad_(True)
    # fast mode: the Jacobian along random directions, backward pass against central differences
    assert torch.autograd.gradcheck(embedder, (batch,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_large_latents_are_shrunk_before_taesd_decodes_them(glue, clip_vision):
    from particle_repulsion.embedders.clip_vision import shrink_for_decoder

    embedder = build(node_recipe(glue, clip_vision, "taesd"))
    assert shrink_for_decoder(latents(size=64), embedder.decoder.upscale, 56).shape[-2:] == (7, 7)
    wide = torch.zeros(1, 4, 32, 96)
    assert shrink_for_decoder(wide, 8, 56).shape[-2:] == (7, 21)
    assert shrink_for_decoder(wide[..., :4, :4], 8, 56).shape[-2:] == (4, 4)  # small already
    assert embedder(latents(size=64)).shape == (3, 32)


def test_image_size_rounds_to_patches_and_resamples_positions(glue, clip_vision):
    embedder = build(node_recipe(glue, clip_vision, "latent_rgb", image_size=30))
    assert embedder.image_size == 28
    embeddings = embedder.tower.vision_model.embeddings
    assert embeddings.positions(2).shape == (1 + 2 * 2, 64)
    assert embeddings.positions(4) is embeddings.position_embedding.weight  # the trained 4 x 4 grid
    assert embedder(latents()).shape == (3, 32)
    assert build(node_recipe(glue, clip_vision, "latent_rgb", image_size=0)).image_size == 56  # the model's own


def test_a_second_build_reuses_the_tower_and_the_decoder(glue, clip_vision):
    recipe = node_recipe(glue, clip_vision, "taesd")
    first, second = build(recipe), build(recipe)
    assert first is not second and first.tower is second.tower is recipe.tower
    assert first.decoder is second.decoder


# --- decoder choice and errors -------------------------------------------------------------------------

def test_auto_picks_taesd_when_its_safetensors_file_exists_and_latent_rgb_otherwise(glue, clip_vision, vae_approx):
    recipe = node_recipe(glue, clip_vision, "auto")
    assert build(recipe, 4, "SD15").decoder.name == "TAESD (taesd_decoder.safetensors)"
    assert build(recipe, 4, "SD15").decoder.upscale == 8
    # SDXL: only a pickle file in vae_approx, never read (its bytes are not a pickle)
    assert build(recipe, 4, "SDXL").decoder.name == "the latent-to-RGB preview factors"
    assert build(recipe, 16, "SD3").decoder.upscale == 1
    assert build(node_recipe(glue, clip_vision, "latent_rgb"), 4, "SD15").decoder.upscale == 1


def test_taesd_required_but_only_a_pickle_there_names_both(glue, clip_vision):
    with pytest.raises(ValueError, match=r"no taesdxl_decoder\.safetensors .*SDXL.* Found taesdxl_decoder\.pth, "
                                         r"but the pack reads only \.safetensors"):
        build(node_recipe(glue, clip_vision, "taesd"), 4, "SDXL")


def test_a_model_with_neither_decoder_is_refused(glue, clip_vision):
    with pytest.raises(ValueError, match="cannot turn this model's LatentFormat latents into an image"):
        build(node_recipe(glue, clip_vision, "auto"), 4, "LatentFormat")
    with pytest.raises(ValueError, match="latent_rgb, but this model .* has no latent-to-RGB preview factors"):
        build(node_recipe(glue, clip_vision, "latent_rgb"), 4, "LatentFormat")
    with pytest.raises(ValueError, match="ComfyUI knows no image TAESD for LatentFormat"):
        build(node_recipe(glue, clip_vision, "taesd"), 4, "LatentFormat")


def test_wrong_channel_counts_are_named(glue, clip_vision):
    with pytest.raises(ValueError, match="TAESD decoder taesd_decoder.safetensors decodes 4-channel latents, but the "
                                         "model makes 16-channel"):
        build(node_recipe(glue, clip_vision, "taesd"), 16, "SD15")
    with pytest.raises(ValueError, match="reads 4-channel latents, but the model makes 16-channel"):
        build(node_recipe(glue, clip_vision, "latent_rgb"), 16, "SD15")
    embedder = build(node_recipe(glue, clip_vision, "latent_rgb"))
    with pytest.raises(ValueError, match="built for 4-channel latents but received 16-channel"):
        embedder(torch.zeros(2, 16, 8, 8))


def test_image_encoders_without_a_class_token_are_refused(glue, tmp_path):
    siglip = small_clip_vision(tmp_path, {**SMALL_CLIP_CONFIG, "model_type": "siglip_vision_model"})
    with pytest.raises(ValueError, match="SigLIP and DINOv2 image encoders are not supported"):
        node_recipe(glue, siglip, "auto")
    with pytest.raises(ValueError, match="not a CLIP vision model"):
        node_recipe(glue, object(), "auto")


# --- inside the real ComfyUI server --------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_vision_file(comfy) -> str:
    """File name (for CLIPVisionLoader) of the tiny ViT-L CLIP vision model."""
    import tiny_clip_vision
    import tiny_models

    return tiny_models.ensure(tiny_clip_vision.TINY_CLIP_VISION).name


@pytest.fixture(scope="module")
def host_taesd(comfy) -> str:
    """The random SD1.x TAESD decoder in the host's models/vae_approx, where the server finds it."""
    import tiny_taesd

    return tiny_taesd.ensure_decoder(tiny_taesd.host_vae_approx_folder()).name


def repulsive_ksampler(graph: Graph, server, node_id: str, embedder: str, **repulsion) -> str:
    """A Repulsive KSampler node: the graph's sampler inputs, `repulsion`, every other widget at its default."""
    required = server.object_info()["ParticleRepulsionKSampler"]["input"]["required"]
    inputs = graph.sampler_inputs("euler", "normal", seed=5, steps=1, latent=LATENT)
    defaults = {name: spec[1]["default"] for name, spec in required.items()
                if name not in inputs and len(spec) > 1 and "default" in spec[1]}
    return graph.add(node_id, "ParticleRepulsionKSampler", **{**inputs, **defaults, **repulsion},
                     embedder=[embedder, 0])


def test_object_info_lists_the_node_with_tooltips(server):
    node = server.object_info()[NODE]
    assert node["display_name"] == "CLIP Vision Embedder"
    assert node["category"] == "particle_repulsion/embedders" and node["output"] == ["EMBEDDER"]
    assert all(options[1].get("tooltip") for options in node["input"]["required"].values())
    assert node["input"]["required"]["decoder"][0] == ["auto", "taesd", "latent_rgb"]


def test_clip_vision_repulsion_in_the_real_server(server, tiny_checkpoint, clip_vision_file, host_taesd):
    # one step, two images, 28 pixels: the tiny CLIP vision is a full-size ViT-L (ComfyUI detects no smaller)
    graph = Graph(tiny_checkpoint, batch_size=2)
    graph.add("clip_vision", "CLIPVisionLoader", clip_name=clip_vision_file)
    embedder = graph.add("embedder", NODE, clip_vision=["clip_vision", 0], decoder="auto", image_size=28)
    stock = graph.save_latent(graph.stock_ksampler("stock", seed=5, steps=1))
    plain = graph.save_latent(repulsive_ksampler(graph, server, "plain", embedder, strength=0.0))
    repelled = graph.save_latent(repulsive_ksampler(graph, server, "repelled", embedder, strength=1.0))
    result = server.run(graph.nodes)

    assert torch.equal(result.latents(plain), result.latents(stock))  # strength 0: the stock KSampler, bit for bit
    difference = (result.latents(repelled) - result.latents(plain)).abs().max()
    assert torch.isfinite(result.latents(repelled)).all() and difference > 1e-3
    assert f"with TAESD ({host_taesd})" in server.log_text()  # auto found the host's decoder

