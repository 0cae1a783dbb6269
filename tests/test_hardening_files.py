"""Load Style Embedder on a shared server: a crafted style-embedder file is refused, by name, before the
server builds or allocates anything for it; a file with a hostile name is never offered."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from graphs import Graph
from hardening_common import (
    STYLE_EMBEDDERS_DIR, assert_no_server_path, assert_still_serves, peak_memory_bytes, rejected_prompt,
    remove_session_files, tagged,
)

from particle_repulsion.embedders import StyleClassifier, load_style_embedder, save_style_embedder

LOADER = "ParticleRepulsionLoadStyleEmbedder"


@pytest.fixture(scope="module", autouse=True)
def session_files():
    STYLE_EMBEDDERS_DIR.mkdir(parents=True, exist_ok=True)
    yield
    remove_session_files()


@pytest.fixture(scope="module")
def genuine_file():
    """A valid 4-channel, 3-style embedder file (random weights)."""
    torch.manual_seed(0)
    classifier = StyleClassifier(4, ["ink", "oil", "pastel"], sigma_min=0.03, sigma_max=14.6)
    path = STYLE_EMBEDDERS_DIR / f"{tagged('genuine')}.safetensors"
    save_style_embedder(path, classifier, {"latent_format": "SD15"})
    return path


def crafted(genuine, stem: str, metadata_changes=None, tensor_changes=None) -> str:
    """A copy of the genuine file with some metadata entries and tensors replaced; its file name."""
    with safe_open(str(genuine), framework="pt") as file:
        metadata = {**file.metadata(), **(metadata_changes or {})}
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    name = f"{tagged(stem)}.safetensors"
    save_file({**tensors, **(tensor_changes or {})}, str(STYLE_EMBEDDERS_DIR / name), metadata=metadata)
    return name


def loader_prompt(checkpoint: str, file_name: str) -> dict:
    graph = Graph(checkpoint)
    graph.add("style", LOADER, style_embedder=file_name)
    graph.add("summary", "PreviewAny", source=["style", 1])
    return graph.nodes


def nan_weights(genuine):
    with safe_open(str(genuine), framework="pt") as file:
        weight = file.get_tensor("classifier.weight")
    weight[1, 2] = float("nan")
    return {"classifier.weight": weight}


CRAFTED = {
    # stem: (metadata changes, tensor changes, what the refusal says)
    "huge_channels": ({"latent_channels": "5000000"}, None, "latent_channels is 5000000, outside 1 to 256"),
    "negative_channels": ({"latent_channels": "-3"}, None, "latent_channels is -3, outside 1 to 256"),
    "many_classes": ({"class_names": json.dumps([f"s{index}" for index in range(5000)])}, None,
                     "5000 styles (classes); at most 4096"),
    "deep_json": ({"class_names": "[" * 100_000 + "]" * 100_000}, None, "is damaged, incomplete or out of bounds"),
    "nan_sigma": ({"sigma_min": "nan"}, None, "sigma_min=nan"),
    "newline_class": ({"class_names": json.dumps(["ink", "oil\nrm -rf", "pastel"])}, None, "control characters"),
    "other_channels": ({"latent_channels": "16"}, None, "convs.0.weight has shape (8, 4, 3, 3) instead of (8, 16, 3, 3)"),
    "integer_weights": (None, {"classifier.bias": torch.zeros(3, dtype=torch.int64)}, "classifier.bias holds I64"),
    "extra_tensor": (None, {"payload": torch.zeros(1)}, "unexpected 'payload'"),
}


@pytest.mark.parametrize("stem", CRAFTED)
def test_a_crafted_file_is_refused_by_name_before_anything_is_built(server, tiny_checkpoint, genuine_file, stem):
    metadata_changes, tensor_changes, message = CRAFTED[stem]
    name = crafted(genuine_file, stem, metadata_changes, tensor_changes)
    peak_before = peak_memory_bytes(server)
    error = server.run_expecting_error(loader_prompt(tiny_checkpoint, name))
    assert message in error and name in error, error
    assert len(error) < 2000
    assert_no_server_path(error)
    assert peak_memory_bytes(server) - peak_before < 100 * 2**20  # 5,000,000 channels used to build 1.4 GB
    assert_still_serves(server, tiny_checkpoint)


def test_nan_weights_are_refused_naming_the_file_and_the_tensor(server, tiny_checkpoint, genuine_file):
    name = crafted(genuine_file, "nan_weights", tensor_changes=nan_weights(genuine_file))
    error = server.run_expecting_error(loader_prompt(tiny_checkpoint, name))
    assert f"The weights in {name} contain NaN or infinite values (in classifier.weight)" in error
    assert_still_serves(server, tiny_checkpoint)


def test_an_oversized_file_is_refused_before_it_is_parsed(server, tiny_checkpoint):
    name = f"{tagged('oversized')}.safetensors"
    (STYLE_EMBEDDERS_DIR / name).write_bytes(b"\0" * (16 * 2**20 + 1))
    error = server.run_expecting_error(loader_prompt(tiny_checkpoint, name))
    assert f"{name} is 16.0 MiB; a style embedder is at most 16 MiB" in error
    assert_still_serves(server, tiny_checkpoint)


def test_a_file_with_a_hostile_name_is_never_offered(server, tiny_checkpoint, genuine_file):
    hostile = f"{tagged('<img src=x onerror=alert(1)>')}.safetensors"
    (STYLE_EMBEDDERS_DIR / hostile).write_bytes(genuine_file.read_bytes())
    offered = server.object_info()[LOADER]["input"]["required"]["style_embedder"][0]
    assert genuine_file.name in offered and hostile not in offered
    assert not any("<" in name for name in offered)
    assert "value_not_in_list" in rejected_prompt(server, loader_prompt(tiny_checkpoint, hostile))
    assert_still_serves(server, tiny_checkpoint)


def test_the_genuine_file_still_loads_on_the_server(server, tiny_checkpoint, genuine_file):
    result = server.run(loader_prompt(tiny_checkpoint, genuine_file.name))
    assert result.ui_text("summary")[0].startswith(f"{genuine_file.name}: style classifier of 3 styles")
    assert load_style_embedder(genuine_file, expected_channels=4).class_names == ("ink", "oil", "pastel")
