"""Diversity Metric and Diversity Compare inside the real ComfyUI server, on the tiny checkpoint's pictures.

FLOAT outputs are read through ComfyUI's own "Preview as Text" node (PreviewAny), which puts
`str(value)` in the prompt's history; plots go through SaveImage.
"""
import math
import re

import numpy as np
import pytest
import torch

from graphs import CHECKPOINT, LATENT, VAE_OUTPUT, Graph

METRIC, COMPARE = "ParticleRepulsionDiversityMetric", "ParticleRepulsionDiversityCompare"
METRIC_OUTPUTS = ("vendi", "mean_l2_distance", "mean_cosine_distance", "frechet", "report", "plot")
COMPARE_OUTPUTS = ("vendi_a", "vendi_b", "report", "plot")
BLANK_PLOT_STD = 20.0  # a white canvas, or one flat colour, has a pixel standard deviation near 0


@pytest.fixture(scope="module")
def clip_vision_file(comfy) -> str:
    """File name (for CLIPVisionLoader) of the tiny ViT-L CLIP vision model."""
    import tiny_clip_vision
    import tiny_models

    return tiny_models.ensure(tiny_clip_vision.TINY_CLIP_VISION).name


def metric_node(graph: Graph, node_id: str, features="auto", aspect="whole", prompt_groups=1, plot_width=768,
                plot_height=384, **connections) -> str:
    """Add a Diversity Metric node; `connections` map its optional inputs to node ids (output 0)."""
    links = {name: [source, 0] for name, source in connections.items()}
    return graph.add(node_id, METRIC, features=features, aspect=aspect, prompt_groups=prompt_groups,
                     plot_width=plot_width, plot_height=plot_height, **links)


def compare_node(graph: Graph, node_id: str, features="auto", plot_width=768, plot_height=768,
                 **connections) -> str:
    links = {name: [source, 0] for name, source in connections.items()}
    return graph.add(node_id, COMPARE, features=features, aspect="whole", prompt_groups=1, label_a="plain",
                     label_b="repelled", plot_width=plot_width, plot_height=plot_height, **links)


def show_outputs(graph: Graph, node_id: str, names: tuple[str, ...]) -> dict[str, str]:
    """Route every output of `node_id` named in `names` to a Preview-as-Text node (the plot to SaveImage)."""
    shown = {}
    for index, name in enumerate(names):
        if name == "plot":
            shown[name] = graph.add(f"{node_id}_plot", "SaveImage", images=[node_id, index],
                                    filename_prefix=f"tests/{node_id}_plot")
        else:
            shown[name] = graph.add(f"{node_id}_{name}", "PreviewAny", source=[node_id, index])
    return shown


def decoded(graph: Graph, latent: str) -> str:
    return graph.add(f"decode_{latent}", "VAEDecode", samples=[latent, 0], vae=[CHECKPOINT, VAE_OUTPUT])


def float_output(result, node_id: str) -> float:
    return float(result.ui_text(node_id)[0])


def reported_number(text: str, label: str) -> float:
    """The value printed after `label` in a report line, e.g. 'Vendi score   3.214'."""
    match = re.search(rf"{label}\s+(-?[0-9.e+-]+)", text)
    assert match, f"no {label!r} line in:\n{text}"
    return float(match.group(1))


def assert_plot(result, save_node: str, size: tuple[int, int]) -> None:
    """The saved plot has exactly `size` (width, height) and is not a blank canvas."""
    (plot,) = result.images(save_node)
    assert plot.shape == (size[1], size[0], 3)
    assert plot.astype(np.float32).std() > BLANK_PLOT_STD


def colour_batch(graph: Graph, node_id: str, colours: tuple[int, ...], size: int = 64) -> str:
    """An IMAGE batch of flat-colour pictures (ComfyUI's EmptyImage), one per 0xRRGGBB colour."""
    parts = [graph.add(f"{node_id}_{index}", "EmptyImage", width=size, height=size, batch_size=1, color=colour)
             for index, colour in enumerate(colours)]
    batch = parts[0]
    for index, part in enumerate(parts[1:], start=1):
        batch = graph.add(f"{node_id}_upto_{index}", "ImageBatch", image1=[batch, 0], image2=[part, 0])
    return batch


def flat_colour_pixels(colours: tuple[int, ...], size: int = 64) -> torch.Tensor:
    """The same batch as `colour_batch`, built here: `[N, size, size, 3]` in 0..1."""
    channels = [[(colour >> shift & 0xFF) / 0xFF for shift in (16, 8, 0)] for colour in colours]
    return torch.tensor(channels).view(len(colours), 1, 1, 3).expand(-1, size, size, -1)


def test_object_info_lists_both_nodes_as_output_nodes_with_tooltips(server):
    info = server.object_info()
    for node_id in (METRIC, COMPARE):
        node = info[node_id]
        assert node["category"] == "particle_repulsion/metrics"
        assert node["output_node"] is True
        assert node["description"]
        inputs = {**node["input"]["required"], **node["input"]["optional"]}
        assert all(options[1].get("tooltip") for options in inputs.values()), node_id
        assert len(node["output_tooltips"]) == len(node["output"])


def test_clip_vision_metric_on_sampled_images(server, tiny_checkpoint, clip_vision_file):
    graph = Graph(tiny_checkpoint, batch_size=4)
    images = decoded(graph, graph.stock_ksampler("sampled", seed=7))
    clip_vision = graph.add("clip_vision", "CLIPVisionLoader", clip_name=clip_vision_file)
    metric = metric_node(graph, "metric", plot_width=640, plot_height=320, images=images, clip_vision=clip_vision)
    shown = show_outputs(graph, metric, METRIC_OUTPUTS)
    result = server.run(graph.nodes)

    values = {name: float_output(result, shown[name]) for name in METRIC_OUTPUTS[:4]}
    assert all(math.isfinite(value) for value in values.values())
    assert 1.0 < values["vendi"] <= 4.0
    assert values["mean_l2_distance"] > 0 and values["mean_cosine_distance"] > 0
    assert values["frechet"] == -1.0  # no reference connected
    text = result.ui_text(shown["report"])[0]
    assert result.ui_text(metric) == [text]  # the report is also shown on the node itself
    assert "CLIP vision" in text and "chosen automatically" in text and "Frechet" not in text
    assert reported_number(text, "Vendi score") == pytest.approx(values["vendi"], rel=1e-3)
    assert reported_number(text, "Mean cosine distance") == pytest.approx(values["mean_cosine_distance"], rel=1e-3)
    assert_plot(result, shown["plot"], (640, 320))
    assert len(result.node_output(metric)["images"]) == 1  # the plot preview on the node


def test_embedder_features_on_the_latent_match_the_pure_metric(server, tiny_checkpoint, comfy):
    from particle_repulsion.embedders import build_embedder
    from particle_repulsion.metrics import location_features, vendi_score

    graph = Graph(tiny_checkpoint, batch_size=4)
    sampled = graph.stock_ksampler("sampled", seed=7)
    saved_latent = graph.save_latent(sampled)
    embedder = graph.add("embedder", "ParticleRepulsionEmbedder", embedder="random_cnn", seed=3, grid_size=4)
    metric = metric_node(graph, "metric_embedder", aspect="location", latent=sampled, embedder=embedder)
    shown = show_outputs(graph, metric, METRIC_OUTPUTS)
    rgb_embedder = graph.add("rgb_embedder", "ParticleRepulsionEmbedder", embedder="latent_rgb", seed=0, grid_size=4)
    rgb_metric = metric_node(graph, "metric_rgb", features="embedder", latent=sampled, embedder=rgb_embedder,
                             model=CHECKPOINT)  # latent_rgb reads the model's latent format
    rgb_vendi = show_outputs(graph, rgb_metric, ("vendi",))["vendi"]
    result = server.run(graph.nodes)

    with torch.no_grad():
        feature_map = build_embedder("random_cnn", 4, seed=3, grid_size=4).feature_map(result.latents(saved_latent))
    expected_vendi = vendi_score(location_features(feature_map, 8))
    assert float_output(result, shown["vendi"]) == pytest.approx(expected_vendi, rel=1e-5)
    text = result.ui_text(shown["report"])[0]
    assert "random_cnn embedder" in text and "chosen automatically" in text and "location" in text
    assert 1.0 < float_output(result, rgb_vendi) <= 4.0
    assert_plot(result, shown["plot"], (768, 384))


def test_pixel_fallback_and_frechet_to_a_reference_match_the_pure_metrics(server, tiny_checkpoint, comfy):
    from particle_repulsion.metrics import frechet_distance, pixel_features, vendi_score

    colours, reference_colours = (0x203040, 0xC04010, 0x10A0F0, 0x10A0E0), (0x808080, 0xF0F000, 0x0000C0)
    graph = Graph(tiny_checkpoint)
    metric = metric_node(graph, "metric_pixels", prompt_groups=2, images=colour_batch(graph, "colours", colours),
                         reference_images=colour_batch(graph, "reference", reference_colours))
    shown = show_outputs(graph, metric, METRIC_OUTPUTS)
    result = server.run(graph.nodes)

    features = pixel_features(flat_colour_pixels(colours))
    expected_vendi = (vendi_score(features[:2]) + vendi_score(features[2:])) / 2
    expected_frechet = frechet_distance(features, pixel_features(flat_colour_pixels(reference_colours)))
    assert float_output(result, shown["vendi"]) == pytest.approx(expected_vendi, rel=1e-6)
    assert float_output(result, shown["frechet"]) == pytest.approx(expected_frechet.distance, rel=1e-6)
    text = result.ui_text(shown["report"])[0]
    assert "downscaled pixels" in text and "chosen automatically" in text and "averaged over 2 prompt groups" in text
    assert "Reference set: 3 images" in text and "covariances were shrunk" in text
    assert_plot(result, shown["plot"], (768, 384))


def test_compare_reports_both_batches_side_by_side(server, tiny_checkpoint):
    graph = Graph(tiny_checkpoint, batch_size=4)
    plain = graph.repulsive_ksampler("plain", "euler_ancestral", strength=0.0, steps=4)
    repelled = graph.repulsive_ksampler("repelled", "euler_ancestral", strength=0.5, steps=4)
    compare = compare_node(graph, "compare", features="latent", plot_width=512, plot_height=700,
                           latent_a=plain, latent_b=repelled)
    shown = show_outputs(graph, compare, COMPARE_OUTPUTS)
    result = server.run(graph.nodes)

    vendi_a, vendi_b = (float_output(result, shown[name]) for name in ("vendi_a", "vendi_b"))
    assert 1.0 < vendi_a <= 4.0 and 1.0 < vendi_b <= 4.0
    text = result.ui_text(shown["report"])[0]
    assert "plain: 4 images, repelled: 4 images" in text
    vendi_line = next(line for line in text.splitlines() if line.startswith("Vendi score"))
    assert [float(value) for value in vendi_line.split()[2:4]] == pytest.approx([vendi_a, vendi_b], rel=1e-3)
    l2_line = next(line for line in text.splitlines() if line.startswith("Mean L2 distance"))
    assert l2_line.endswith("more diverse")  # repulsion spreads the latents (tests/test_repulsive_sampler.py)
    assert_plot(result, shown["plot"], (512, 700))


def bad_input_graphs(tiny_checkpoint) -> dict[str, tuple[Graph, str]]:
    """Prompts a user could build by mistake, each with a phrase its error message must contain."""
    cases = {}

    def case(name: str, expected: str, batch_size: int = 4) -> Graph:
        graph = Graph(tiny_checkpoint, batch_size=batch_size)
        cases[name] = (graph, expected)
        return graph

    graph = case("batch of one", "has 1 image; diversity needs at least 2", batch_size=1)
    metric_node(graph, "metric", latent=LATENT)

    graph = case("reference of one", "reference set has 1 image")
    graph.add("single", "EmptyLatentImage", width=64, height=64, batch_size=1)
    metric_node(graph, "metric", latent=LATENT, reference_latent="single")

    graph = case("images of different sizes", "is 64x64 pixels and the reference set is 96x64")
    graph.add("small", "EmptyImage", width=64, height=64, batch_size=4, color=0x336699)
    graph.add("wide", "EmptyImage", width=96, height=64, batch_size=4, color=0x996633)
    metric_node(graph, "metric", features="pixels", images="small", reference_images="wide")

    graph = case("mismatched feature sizes", "gives 256 features per image but the reference set gives 1024")
    graph.add("large", "EmptyLatentImage", width=128, height=128, batch_size=4)
    embedder = graph.add("embedder", "ParticleRepulsionEmbedder", embedder="latent", seed=0, grid_size=4)
    metric_node(graph, "metric", features="embedder", latent=LATENT, reference_latent="large", embedder=embedder)

    graph = case("latent_rgb without the model", "optional `model` input")
    embedder = graph.add("embedder", "ParticleRepulsionEmbedder", embedder="latent_rgb", seed=0, grid_size=4)
    metric_node(graph, "metric", latent=LATENT, embedder=embedder)

    graph = case("prompt groups that do not divide the batch", "4 images cannot be split into 3 equal groups")
    metric_node(graph, "metric", prompt_groups=3, latent=LATENT)

    graph = case("no input", "Nothing to measure")
    metric_node(graph, "metric")

    graph = case("compare without batch B", "Nothing to measure for batch B")
    compare_node(graph, "compare", latent_a=LATENT)
    return cases


def test_bad_inputs_give_clear_messages_and_the_server_keeps_working(server, tiny_checkpoint):
    for name, (graph, expected) in bad_input_graphs(tiny_checkpoint).items():
        message = server.run_expecting_error(graph.nodes)
        assert message.startswith("ValueError") and expected in message, f"{name}: {message}"

    graph = Graph(tiny_checkpoint)
    metric = metric_node(graph, "metric_after_errors", images=colour_batch(graph, "colours", (0x112233, 0xDDEEFF)))
    shown = show_outputs(graph, metric, ("vendi",))
    assert float_output(server.run(graph.nodes), shown["vendi"]) > 1.0  # two colours: not all alike
