"""Tests of the style classifier: architecture, noise conditioning and its safetensors files."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from particle_repulsion.embedders import (
    FORMAT_MARKER,
    GramEmbedder,
    StyleClassifier,
    StyleEmbedderError,
    load_style_embedder,
    save_style_embedder,
)

SIGMA_MIN, SIGMA_MAX = 0.03, 14.6
STYLES = ("ukiyo-e", "impressionism", "cubism")


def make_classifier(channels=4, seed=0):
    torch.manual_seed(seed)
    return StyleClassifier(channels, STYLES, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX).eval()


def random_latents(channels, height, width, batch=3, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, height, width, generator=generator, dtype=dtype)


@pytest.fixture
def saved_file(tmp_path):
    """A saved 4-channel style embedder, its path and the classifier it came from."""
    classifier = make_classifier()
    path = tmp_path / "styles.safetensors"
    save_style_embedder(path, classifier, {"latent_format": "SD15", "validation_accuracy": 0.75})
    return path, classifier


def rewrite(source, destination, *, tensors=None, metadata_changes=None):
    """Copy a safetensors file with some tensors replaced and some metadata entries changed."""
    with safe_open(str(source), framework="pt") as file:
        contents = {key: file.get_tensor(key) for key in file.keys()}
        metadata = dict(file.metadata())
    contents = tensors(contents) if tensors else contents
    metadata.update(metadata_changes or {})
    save_file(contents, str(destination), metadata=metadata)
    return destination


@pytest.mark.parametrize("channels", (4, 16))
@pytest.mark.parametrize("size", ((8, 8), (13, 9), (32, 32)))
def test_features_and_logits_have_the_documented_shapes(channels, size):
    classifier = make_classifier(channels)
    latents = random_latents(channels, *size)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    features = classifier(latents, sigma)
    assert features.shape == (3, 64) == (3, classifier.feature_size(channels, *size))
    assert torch.isfinite(features).all()
    assert classifier.classify(latents, sigma).shape == (3, len(STYLES))
    assert GramEmbedder(classifier)(latents, sigma).shape == (3, 64 * 65 // 2)


def test_tiny_latents_work():
    assert make_classifier()(random_latents(4, 1, 1)).shape == (3, 64)


def test_noise_level_changes_the_features():
    classifier = make_classifier()
    latents = random_latents(4, 8, 8)
    low, high = classifier(latents, torch.full((3,), 0.1)), classifier(latents, torch.full((3,), 5.0))
    assert not torch.allclose(low, high, atol=1e-4)


def test_noise_level_reaches_the_features_beyond_input_scaling():
    """Undo the 1/sqrt(1 + sigma^2) input scaling: the sigma bias alone must still change the features."""
    classifier = make_classifier()
    latents = random_latents(4, 8, 8)
    low, high = 0.1, 5.0
    at_low = classifier(latents * (1 + low**2) ** 0.5, torch.full((3,), low))
    at_high = classifier(latents * (1 + high**2) ** 0.5, torch.full((3,), high))
    assert not torch.allclose(at_low, at_high, atol=1e-4)


def test_sigma_is_clamped_to_the_training_range_and_none_means_clean():
    classifier = make_classifier()
    latents = random_latents(4, 8, 8)
    torch.testing.assert_close(classifier(latents, None), classifier(latents, torch.full((3,), SIGMA_MIN)))
    at_max = classifier(latents, torch.full((3,), SIGMA_MAX))
    torch.testing.assert_close(classifier(latents, torch.full((3,), 1e4)), at_max)


def test_one_sigma_serves_the_whole_batch_and_a_wrong_count_is_refused():
    classifier = make_classifier()
    latents = random_latents(4, 8, 8)
    torch.testing.assert_close(classifier(latents, torch.tensor(2.0)), classifier(latents, torch.full((3,), 2.0)))
    with pytest.raises(ValueError, match="one per latent"):
        classifier(latents, torch.ones(2))


def test_gradients_match_finite_differences_in_float64():
    classifier = make_classifier()
    latents = random_latents(4, 6, 5, batch=2, dtype=torch.float64).requires_grad_(True)
    sigma = torch.tensor([0.2, 3.0])
    assert torch.autograd.gradcheck(lambda x: classifier(x, sigma), (latents,), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("names, message", [
    (["only one"], "at least two"),
    (["a", "a"], "different from each other"),
    (["a", ""], "non-empty"),
])
def test_class_names_are_checked(names, message):
    with pytest.raises(ValueError, match=message):
        StyleClassifier(4, names, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)


def test_sigma_range_is_checked():
    with pytest.raises(ValueError, match="0 < sigma_min <= sigma_max"):
        StyleClassifier(4, STYLES, sigma_min=0.0, sigma_max=1.0)


def test_save_then_load_gives_identical_outputs_and_metadata(saved_file):
    path, classifier = saved_file
    loaded = load_style_embedder(path, expected_channels=4)
    latents = random_latents(4, 13, 9)
    sigma = torch.tensor([0.05, 0.7, 9.0])
    assert torch.equal(loaded(latents, sigma), classifier(latents, sigma))
    assert torch.equal(loaded.classify(latents, sigma), classifier.classify(latents, sigma))
    assert loaded.class_names == STYLES
    assert (loaded.latent_channels, loaded.sigma_min, loaded.sigma_max) == (4, SIGMA_MIN, SIGMA_MAX)
    assert loaded.metadata["latent_format"] == "SD15"
    assert float(loaded.metadata["validation_accuracy"]) == 0.75
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_file_metadata_is_readable_without_the_pack(saved_file):
    path, _ = saved_file
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    assert metadata["format"] == FORMAT_MARKER
    assert metadata["architecture_version"] == "2"
    assert json.loads(metadata["class_names"]) == list(STYLES)
    assert metadata["latent_channels"] == "4"


def test_loaded_under_inference_mode_still_backpropagates(saved_file):
    path, _ = saved_file
    with torch.inference_mode():
        loaded = load_style_embedder(path)
    latents = random_latents(4, 8, 8).requires_grad_(True)
    loaded(latents).square().sum().backward()
    assert latents.grad.abs().sum() > 0


def test_save_needs_the_latent_format_and_keeps_reserved_names(tmp_path):
    with pytest.raises(ValueError, match="latent_format"):
        save_style_embedder(tmp_path / "a.safetensors", make_classifier(), {})
    with pytest.raises(ValueError, match="reserved"):
        save_style_embedder(tmp_path / "a.safetensors", make_classifier(), {"latent_format": "SD15", "format": "x"})
    assert not list(tmp_path.iterdir())


def test_loader_rejects_a_missing_file(tmp_path):
    with pytest.raises(StyleEmbedderError, match="does not exist"):
        load_style_embedder(tmp_path / "nowhere.safetensors")


def test_loader_rejects_a_truncated_file(saved_file, tmp_path):
    path, _ = saved_file
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(StyleEmbedderError, match="corrupt or only partly"):
        load_style_embedder(truncated)


def test_loader_rejects_a_corrupt_file(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x89PNG this is a picture, not a style embedder" * 10)
    with pytest.raises(StyleEmbedderError, match="corrupt or only partly"):
        load_style_embedder(corrupt)


def test_loader_rejects_a_checkpoint(tmp_path):
    checkpoint = tmp_path / "v1-5-pruned.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(checkpoint),
              metadata={"modelspec.architecture": "stable-diffusion-v1"})
    with pytest.raises(StyleEmbedderError, match="not a Particle Repulsion style embedder"):
        load_style_embedder(checkpoint)


def test_version_two_keeps_a_4x4_map_where_version_one_pooled_it_away():
    latents = random_latents(4, 4, 4)
    version_two = make_classifier()
    torch.manual_seed(0)
    version_one = StyleClassifier(4, STYLES, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, architecture_version=1).eval()
    assert version_two.feature_map(latents).shape[-2:] == (4, 4)
    assert version_one.feature_map(latents).shape[-2:] == (1, 1)
    large = random_latents(4, 64, 64)
    torch.testing.assert_close(version_one(large), version_two(large))  # the same network from 64x64 up


def test_a_version_one_file_loads_with_its_own_layout(tmp_path):
    torch.manual_seed(1)
    old = StyleClassifier(4, STYLES, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, architecture_version=1).eval()
    path = tmp_path / "old.safetensors"
    save_style_embedder(path, old, {"latent_format": "SD15"})
    loaded = load_style_embedder(path)
    latents = random_latents(4, 8, 8)
    assert loaded.architecture_version == 1
    torch.testing.assert_close(loaded(latents), old(latents))


def test_class_probabilities_are_the_softmax_of_the_logits():
    from particle_repulsion.embedders import StyleProbabilities

    classifier = make_classifier()
    latents = random_latents(4, 8, 8)
    probabilities = StyleProbabilities(classifier)(latents, torch.full((3,), 0.5))
    torch.testing.assert_close(probabilities, torch.softmax(classifier.classify(latents, torch.full((3,), 0.5)), 1))
    assert StyleProbabilities(classifier).feature_size(4, 8, 8) == len(STYLES)


def test_loader_rejects_an_unknown_architecture_version(saved_file, tmp_path):
    path, _ = saved_file
    future = rewrite(path, tmp_path / "future.safetensors", metadata_changes={"architecture_version": "99"})
    with pytest.raises(StyleEmbedderError, match="architecture version 99"):
        load_style_embedder(future)


def test_loader_rejects_damaged_metadata(saved_file, tmp_path):
    path, _ = saved_file
    damaged = rewrite(path, tmp_path / "damaged.safetensors", metadata_changes={"class_names": "not json"})
    with pytest.raises(StyleEmbedderError, match="metadata of damaged.safetensors is damaged"):
        load_style_embedder(damaged)


def test_loader_rejects_missing_tensors(saved_file, tmp_path):
    path, _ = saved_file
    def drop_head(tensors):
        return {key: tensor for key, tensor in tensors.items() if not key.startswith("classifier.")}

    without_head = rewrite(path, tmp_path / "missing.safetensors", tensors=drop_head)
    with pytest.raises(StyleEmbedderError, match="missing classifier.weight"):
        load_style_embedder(without_head)


def test_loader_rejects_mis_shaped_tensors(saved_file, tmp_path):
    path, _ = saved_file
    reshaped = rewrite(path, tmp_path / "reshaped.safetensors",
                       tensors=lambda tensors: {**tensors, "classifier.bias": torch.zeros(7)})
    with pytest.raises(StyleEmbedderError, match=r"classifier.bias has shape \(7,\) instead of \(3,\)"):
        load_style_embedder(reshaped)


def test_loader_rejects_latents_with_other_channels(saved_file):
    path, _ = saved_file
    with pytest.raises(StyleEmbedderError, match=(
        r"trained for 4-channel latents \(SD15\) but the model makes 16-channel latents"
    )):
        load_style_embedder(path, expected_channels=16)


def test_style_embedder_error_is_a_value_error():
    assert issubclass(StyleEmbedderError, ValueError)
