"""The foundation: ComfyUI loads the pack cleanly and runs the stock graph on the tiny checkpoint."""
import numpy as np

from graphs import Graph


def test_stock_graph_runs_ksampler_on_the_tiny_checkpoint(server, tiny_checkpoint):
    graph = Graph(tiny_checkpoint, batch_size=4)
    saved = graph.save_image(graph.stock_ksampler("stock", steps=4))
    images = server.run(graph.nodes).images(saved)
    assert len(images) == 4
    assert all(image.shape == (64, 64, 3) for image in images)
    # Each sample started from its own noise: a real sampler run gives four different pictures.
    pixels = np.stack(images).astype(np.float32)
    assert all(np.abs(pixels[i] - pixels[j]).mean() > 1.0 for i in range(4) for j in range(i + 1, 4))


def test_host_lists_every_node_the_pack_exports(server, comfy):
    from particle_repulsion.nodes.registry import NODE_CLASS_MAPPINGS

    assert server.pack_import_errors() == []
    listed = set(server.object_info())
    assert NODE_CLASS_MAPPINGS, "the pack exports no nodes"
    assert set(NODE_CLASS_MAPPINGS) <= listed, f"missing from /object_info: {sorted(set(NODE_CLASS_MAPPINGS) - listed)}"
