"""Style-embedder nodes in the real ComfyUI host: both training data sources, the loader, its refusals.

Heavy work happens once per module: scikit-learn's digits are written as PNG folders, encoded with the
tiny checkpoint's VAE through the Style Latents from Image Folder node (in-process) and trained with the
Train Style Embedder node; the saved file then goes through the Load Style Embedder node on the server.
Every file this module writes carries a per-session tag and is deleted at the end.
"""
import os
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_digits

import comfy_host
from graphs import CHECKPOINT, CLIP_OUTPUT, MODEL_OUTPUT, VAE_OUTPUT, Graph

from particle_repulsion.embedders import load_style_embedder, save_style_embedder, train_style_classifier

SESSION_TAG = f"pytest-{uuid.uuid4().hex[:8]}"
STYLE_EMBEDDERS_DIR = comfy_host.COMFYUI_DIR / "models" / "style_embedders"
INPUT_DIR = comfy_host.COMFYUI_DIR / "input"
DIGIT_PIXELS = 48  # 6x6 latents: at 32 px (4x4 latents) validation accuracy varied from 80% to 100% over seeds
TRAINED_DIGITS, IMAGES_PER_DIGIT = (0, 1, 2, 3), 48  # over 8 training seeds: 93.8% to 97.9% validation accuracy
# SD1.5's noise schedule (ComfyUI's EPS model sampling), which the trainer must take from the model.
SD15_SIGMA_MIN, SD15_SIGMA_MAX = 0.029167, 14.6146


def embedder_file(stem: str) -> str:
    return f"{SESSION_TAG}-{stem}.safetensors"


def write_digit_folders(root: Path, digits: tuple[int, ...], per_digit: int) -> None:
    """scikit-learn's 8x8 digits as grey PNGs of DIGIT_PIXELS, one sub-folder per digit ("digit0", ...)."""
    dataset = load_digits()
    for digit in digits:
        folder = root / f"digit{digit}"
        folder.mkdir(parents=True)
        for index in np.flatnonzero(dataset.target == digit)[:per_digit]:
            pixels = (dataset.images[index] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).resize((DIGIT_PIXELS, DIGIT_PIXELS), Image.NEAREST).save(folder / f"{index}.png")


@pytest.fixture(scope="module", autouse=True)
def session_files():
    """Delete every style embedder and input folder this module wrote, whatever happened."""
    STYLE_EMBEDDERS_DIR.mkdir(parents=True, exist_ok=True)
    yield
    for path in STYLE_EMBEDDERS_DIR.glob(f"{SESSION_TAG}-*"):
        path.unlink()
    for path in INPUT_DIR.glob(f"{SESSION_TAG}-*"):
        shutil.rmtree(path)


@pytest.fixture(scope="module")
def single_thread(style_training):
    """In-process encoding on one thread too (on 2 shared cores, 2 threads ran 8x slower)."""
    with style_training.one_cpu_thread(torch.device("cpu")):
        yield


@pytest.fixture(scope="module")
def tiny_model_and_vae(comfy, tiny_checkpoint):
    import comfy.sd
    import folder_paths

    path = folder_paths.get_full_path_or_raise("checkpoints", tiny_checkpoint)
    model, _, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=False)
    return model, vae


@dataclass
class DigitsRun:
    folder: str  # the sub-folder of the input folder
    encoded: object  # StyleLatents as the folder node gave them
    recipe: object  # the trained StyleEmbedderRecipe
    report: str
    training_cpu_seconds: float


def at_unit_variance(style_latents, model):
    """The same latents scaled so that the sampler sees them at unit variance, as a real VAE's are.

    The tiny checkpoint's VAE has random weights: its latents, after the model's scaling, have a std
    of about 0.09 (a real SD VAE's about 1), so the model's smallest noise level (sigma 0.029) already
    buries the digits and the classifier cannot learn at the model's noise range.
    """
    sampler_space = model.get_model_object("latent_format").process_in(style_latents.latents)
    return replace(style_latents, latents=style_latents.latents / sampler_space.std())


def input_folder(stem: str) -> str:
    """The name of a sub-folder of ComfyUI's input folder that this module writes (deleted at the end)."""
    return f"{SESSION_TAG}-{stem}"


@pytest.fixture(scope="module")
def digits_run(style_training, tiny_model_and_vae, single_thread):
    model, vae = tiny_model_and_vae
    folder = input_folder("digits")
    write_digit_folders(INPUT_DIR / folder, TRAINED_DIGITS, IMAGES_PER_DIGIT)
    with torch.inference_mode():
        encoded, = style_training.StyleLatentsFromFolder().encode(vae, folder, DIGIT_PIXELS, DIGIT_PIXELS)
        started = time.process_time()
        output = style_training.TrainStyleEmbedder().train(
            model, at_unit_variance(encoded, model), file_name=embedder_file("digits"), overwrite=False,
            epochs=40, batch_size=32, validation_fraction=0.25, seed=0)
        cpu_seconds = time.process_time() - started
    recipe, report = output["result"]
    assert output["ui"]["text"] == [report]
    return DigitsRun(folder, encoded, recipe, report, cpu_seconds)


def test_folder_source_labels_every_image_by_its_sub_folder(digits_run):
    encoded = digits_run.encoded
    assert encoded.class_names == tuple(f"digit{digit}" for digit in TRAINED_DIGITS)
    assert tuple(encoded.latents.shape) == (len(TRAINED_DIGITS) * IMAGES_PER_DIGIT, 4, DIGIT_PIXELS // 8, DIGIT_PIXELS // 8)
    assert torch.bincount(encoded.labels).tolist() == [IMAGES_PER_DIGIT] * len(TRAINED_DIGITS)
    assert encoded.source == f"image folder input/{digits_run.folder}"


def test_trainer_reaches_ninety_percent_on_vae_encoded_digits_within_a_cpu_minute(digits_run):
    metadata = digits_run.recipe.classifier.metadata
    assert float(metadata["validation_accuracy"]) >= 0.9
    assert float(metadata["clean_validation_accuracy"]) >= 0.9
    assert digits_run.training_cpu_seconds < 60
    assert [line.split(":")[0] for line in digits_run.report.splitlines() if line.startswith("epoch ")] == [
        f"epoch {epoch}/40" for epoch in range(1, 41)]


def test_trained_file_round_trips_through_the_loader_node(server, tiny_checkpoint, digits_run):
    graph = Graph(tiny_checkpoint, batch_size=3, width=DIGIT_PIXELS, height=DIGIT_PIXELS)
    graph.add("style", "ParticleRepulsionLoadStyleEmbedder", style_embedder=embedder_file("digits"))
    graph.add("summary", "PreviewAny", source=["style", 1])
    graph.add("gram", "ParticleRepulsionGramEmbedder", embedder=["style", 0])
    plain = graph.save_latent(graph.repulsive_ksampler("plain", strength=0.0))
    styled = graph.save_latent(graph.repulsive_ksampler("styled", strength=0.5, embedder="style"))
    gram = graph.save_latent(graph.repulsive_ksampler("gram_styled", strength=0.5, embedder="gram"))
    result = server.run(graph.nodes)
    assert result.ui_text("summary") == [digits_run.recipe.summary()]
    plain_latents = result.latents(plain)
    for repelled in (result.latents(styled), result.latents(gram)):
        assert torch.isfinite(repelled).all()
        assert not torch.allclose(repelled, plain_latents)
    loaded = load_style_embedder(STYLE_EMBEDDERS_DIR / embedder_file("digits"), expected_channels=4)
    trained = digits_run.recipe.classifier.state_dict()
    assert all(torch.equal(tensor, trained[key]) for key, tensor in loaded.state_dict().items())


def test_cancel_stops_training_and_saves_nothing(style_training, tiny_model_and_vae, digits_run):
    import comfy.model_management

    model, _ = tiny_model_and_vae
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            style_training.TrainStyleEmbedder().train(
                model, digits_run.encoded, file_name=embedder_file("cancelled"), overwrite=False,
                epochs=5, batch_size=16, validation_fraction=0.25, seed=0)
        still_interrupted = comfy.model_management.processing_interrupted()
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert not still_interrupted  # consumed, as ComfyUI does for any cancelled node
    assert not (STYLE_EMBEDDERS_DIR / embedder_file("cancelled")).exists()


def test_latents_of_another_channel_count_are_refused_before_training(style_training, tiny_model_and_vae,
                                                                      digits_run):
    model, _ = tiny_model_and_vae
    sixteen_channels = replace(digits_run.encoded, latents=digits_run.encoded.latents.repeat(1, 4, 1, 1))
    with pytest.raises(ValueError, match="16 channels but the model makes 4-channel latents"):
        style_training.train_for_model(model, sixteen_channels, style_training.TrainingOptions(epochs=1))


def train_node(graph: Graph, source: str, stem: str, seed: int = 0) -> str:
    return graph.add(f"train_{stem}", "ParticleRepulsionTrainStyleEmbedder", model=[CHECKPOINT, MODEL_OUTPUT],
                     style_latents=[source, 0], file_name=f"{SESSION_TAG}-{stem}", epochs=2, batch_size=4,
                     validation_fraction=0.3, seed=seed, overwrite=False)


def folder_source_graph(checkpoint: str, folder: str, seed: int) -> tuple[Graph, str]:
    graph = Graph(checkpoint)
    graph.add("images", "ParticleRepulsionStyleLatentsFromFolder", vae=[CHECKPOINT, VAE_OUTPUT], folder=folder,
              width=DIGIT_PIXELS, height=DIGIT_PIXELS)
    return graph, train_node(graph, "images", "folder", seed)


def test_folder_source_trains_inside_the_server_and_never_overwrites_silently(server, tiny_checkpoint):
    relative_folder = input_folder("server-digits")
    write_digit_folders(INPUT_DIR / relative_folder, digits=(3, 7), per_digit=3)
    graph, train = folder_source_graph(tiny_checkpoint, relative_folder, seed=0)
    report = server.run(graph.nodes).ui_text(train)[0]
    saved = STYLE_EMBEDDERS_DIR / embedder_file("folder")
    classifier = load_style_embedder(saved, expected_channels=4)
    assert classifier.class_names == ("digit3", "digit7")
    assert classifier.sigma_min == pytest.approx(SD15_SIGMA_MIN, rel=1e-3)
    assert classifier.sigma_max == pytest.approx(SD15_SIGMA_MAX, rel=1e-4)
    assert classifier.metadata["latent_format"] == "SD15"
    assert classifier.metadata["training_latents"] == "6"
    assert classifier.metadata["data_source"] == f"image folder input/{relative_folder}"
    assert "epoch 2/2" in report and f"Saved as {saved.name} in models/style_embedders." in report
    assert str(comfy_host.COMFYUI_DIR) not in report

    modified = os.stat(saved).st_mtime_ns
    graph, _ = folder_source_graph(tiny_checkpoint, relative_folder, seed=1)
    assert "already exists" in server.run_expecting_error(graph.nodes)
    assert os.stat(saved).st_mtime_ns == modified


def test_cancel_in_the_server_stops_training_and_saves_nothing(server, tiny_checkpoint):
    relative_folder = input_folder("cancelled")
    write_digit_folders(INPUT_DIR / relative_folder, digits=(4, 5), per_digit=2)
    graph = Graph(tiny_checkpoint)
    graph.add("images", "ParticleRepulsionStyleLatentsFromFolder", vae=[CHECKPOINT, VAE_OUTPUT],
              folder=relative_folder, width=DIGIT_PIXELS, height=DIGIT_PIXELS)
    graph.add("train", "ParticleRepulsionTrainStyleEmbedder", model=[CHECKPOINT, MODEL_OUTPUT],
              style_latents=["images", 0], file_name=f"{SESSION_TAG}-cancelled", epochs=10000, batch_size=1,
              validation_fraction=0.5, seed=0, overwrite=False)
    prompt_id = server.queue(graph.nodes)
    wait_for_log_line(server, f"{SESSION_TAG}-cancelled.safetensors: epoch 1/10000")
    server.interrupt()
    entry = server.wait(prompt_id, timeout=60)
    assert "execution_interrupted" in [kind for kind, _ in entry["status"]["messages"]]
    assert not (STYLE_EMBEDDERS_DIR / embedder_file("cancelled")).exists()


def wait_for_log_line(server, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log_text():
        assert time.monotonic() < deadline, f"the server log never showed {text!r}"
        time.sleep(0.2)


def test_prompt_source_writes_a_valid_style_embedder(server, tiny_checkpoint):
    graph = Graph(tiny_checkpoint)
    graph.add("drawn", "ParticleRepulsionStyleLatentsFromPrompts", model=[CHECKPOINT, MODEL_OUTPUT],
              clip=[CHECKPOINT, CLIP_OUTPUT], styles="watercolor\n\nwoodcut print\n", subjects="a boat\na tree",
              images_per_prompt=1, trajectory_points=2, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal",
              seed=0, width=32, height=32)
    train = train_node(graph, "drawn", "prompts")
    report = server.run(graph.nodes).ui_text(train)[0]
    classifier = load_style_embedder(STYLE_EMBEDDERS_DIR / embedder_file("prompts"), expected_channels=4)
    assert classifier.class_names == ("watercolor", "woodcut print")
    assert classifier.metadata["training_latents"] == "8"  # 2 styles x 2 subjects x 1 image x 2 trajectory points
    assert classifier.metadata["data_source"].startswith("prompts")
    assert "epoch 2/2" in report


@pytest.fixture(scope="module")
def unusable_files():
    """A corrupt file, a safetensors file that is no style embedder, and a 16-channel style embedder."""
    (STYLE_EMBEDDERS_DIR / embedder_file("corrupt")).write_bytes(b"half a download, not a safetensors file")
    save_file({"weight": torch.zeros(3, 3)}, str(STYLE_EMBEDDERS_DIR / embedder_file("not_style")),
              metadata={"format": "pt"})
    latents, labels = torch.randn(8, 16, 4, 4), torch.arange(8) % 2
    classifier, _ = train_style_classifier(latents, labels, ["a", "b"], sigma_min=0.03, sigma_max=1.0, epochs=1,
                                           batch_size=8, validation_fraction=0.25, seed=0)
    save_style_embedder(STYLE_EMBEDDERS_DIR / embedder_file("flux16"), classifier, {"latent_format": "Flux"})


@pytest.mark.parametrize("stem, message", [
    ("corrupt", "cannot be read; it may be corrupt"),
    ("not_style", "is not a Particle Repulsion style embedder"),
    ("flux16", "was trained on 16-channel latents (Flux), but this model makes 4-channel latents"),
])
def test_loader_refuses_unusable_files_with_a_clear_message(server, tiny_checkpoint, unusable_files, stem, message):
    graph = Graph(tiny_checkpoint, batch_size=2)
    graph.add("style", "ParticleRepulsionLoadStyleEmbedder", style_embedder=embedder_file(stem))
    graph.save_latent(graph.repulsive_ksampler("sampled", strength=0.5, steps=2, embedder="style"))
    error = server.run_expecting_error(graph.nodes)
    assert message in error and embedder_file(stem) in error


def test_host_keeps_sampling_with_style_embedders_after_the_refusals(server, tiny_checkpoint, digits_run):
    graph = Graph(tiny_checkpoint, batch_size=2, prompt="a harbour at noon")
    graph.add("style", "ParticleRepulsionLoadStyleEmbedder", style_embedder=embedder_file("digits"))
    sampled = graph.save_latent(graph.repulsive_ksampler("after_refusals", strength=0.5, steps=2, embedder="style"))
    assert torch.isfinite(server.run(graph.nodes).latents(sampled)).all()
    assert server.process.poll() is None
