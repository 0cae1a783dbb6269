"""Train Style Embedder and the other nodes' inputs on a shared server: file names, the promise never to
overwrite, leftovers of killed saves, NaN in float inputs and plans too large for the server's memory."""
import os
import time

import pytest

from comfy_server import execution_error
from graphs import CHECKPOINT, CLIP_OUTPUT, MODEL_OUTPUT, Graph
from hardening_common import (
    INPUT_DIR, STYLE_EMBEDDERS_DIR, add_trainer, assert_no_server_path, assert_still_serves, folder_graph,
    rejected_prompt, remove_session_files, tagged, write_style_images,
)

RACE_EPOCHS = 150  # long enough (about 6 s here) to create the file while the model trains
DAY_SECONDS = 24 * 3600


@pytest.fixture(scope="module", autouse=True)
def style_folder():
    """An input sub-folder with 2 styles x 3 images; its name."""
    STYLE_EMBEDDERS_DIR.mkdir(parents=True, exist_ok=True)
    write_style_images(INPUT_DIR / tagged("styles"))
    yield tagged("styles")
    remove_session_files()


def wait_for_log_line(server, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log_text():
        assert time.monotonic() < deadline, f"the server log never showed {text!r}"
        time.sleep(0.05)


def test_a_file_created_while_the_model_trains_is_never_replaced(server, tiny_checkpoint, style_folder):
    name = tagged("race")
    path = STYLE_EMBEDDERS_DIR / f"{name}.safetensors"
    prompt_id = server.queue(folder_graph(tiny_checkpoint, style_folder, name, epochs=RACE_EPOCHS,
                                            batch_size=1).nodes)
    wait_for_log_line(server, f"{name}.safetensors: epoch 1/{RACE_EPOCHS}")  # its existence check is behind it
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)  # fails if training already saved
    os.write(descriptor, b"someone else's style embedder")
    os.close(descriptor)
    entry = server.wait(prompt_id)
    assert entry["status"]["status_str"] == "error"
    error = execution_error(entry)
    assert f"{name}.safetensors already exists; choose another file name, or turn on overwrite" in error
    assert_no_server_path(error)
    assert path.read_bytes() == b"someone else's style embedder"
    assert not list(STYLE_EMBEDDERS_DIR.glob(f".{name}*"))  # its own partial file is gone
    assert_still_serves(server, tiny_checkpoint)


def test_partial_files_of_killed_saves_are_removed_by_the_next_save(server, tiny_checkpoint, style_folder):
    stale = [STYLE_EMBEDDERS_DIR / f".{tagged('killed')}.safetensors.x81kq.partial",
             STYLE_EMBEDDERS_DIR / f"{tagged('killed-before')}.safetensors.partial"]
    fresh = STYLE_EMBEDDERS_DIR / f".{tagged('saving')}.safetensors.p4q0z.partial"
    for path in [*stale, fresh]:
        path.write_bytes(b"half a style embedder")
    for path in stale:
        os.utime(path, (time.time() - DAY_SECONDS, time.time() - DAY_SECONDS))
    graph = folder_graph(tiny_checkpoint, style_folder, tagged("after-kill"))
    report = server.run(graph.nodes).ui_text("train")[0]
    assert f"Saved as {tagged('after-kill')}.safetensors in models/style_embedders." in report
    assert_no_server_path(report)
    assert not any(path.exists() for path in stale)
    assert fresh.exists()  # another save may be writing it right now
    assert_still_serves(server, tiny_checkpoint)


UNUSABLE_FILE_NAMES = ["nul\0byte", "x" * 252, "<img src=x onerror=alert(1)>", "../escape", "sub/name", ".hidden",
                       "two\nlines", "CON", "  ", "a" * 129]


def test_unusable_file_names_are_refused_when_the_prompt_is_queued(server, tiny_checkpoint, style_folder):
    for file_name in UNUSABLE_FILE_NAMES:
        answer = rejected_prompt(server, folder_graph(tiny_checkpoint, style_folder, file_name).nodes)
        assert "custom_validation_failed" in answer and "The file_name" in answer, (file_name, answer)
        assert "cannot be used" in answer
    assert not [path for path in STYLE_EMBEDDERS_DIR.iterdir() if "onerror" in path.name or "escape" in path.name]
    assert_still_serves(server, tiny_checkpoint)


def test_a_linked_file_name_is_checked_before_training_starts(server, tiny_checkpoint, style_folder):
    graph = folder_graph(tiny_checkpoint, style_folder, ["name", 0], epochs=10000, batch_size=1)  # hours if it ran
    graph.add("name", "PrimitiveString", value="<img src=x onerror=alert(1)>")
    error = server.run_expecting_error(graph.nodes, timeout=120)
    assert "The file_name '<img src=x onerror=alert(1)>' cannot be used: it holds characters other than" in error
    assert_still_serves(server, tiny_checkpoint)


def test_nan_in_a_float_input_is_refused_naming_the_input(server, tiny_checkpoint, style_folder):
    nan = float("nan")  # ComfyUI's JSON parser accepts NaN, and NaN passes its min/max checks
    graph = folder_graph(tiny_checkpoint, style_folder, tagged("nan"), validation_fraction=nan)
    assert "The input validation_fraction is nan; give a finite number." in server.run_expecting_error(graph.nodes)

    graph = prompt_source_graph(tiny_checkpoint, cfg=nan)
    assert "The input cfg is nan; give a finite number." in server.run_expecting_error(graph.nodes)

    graph = Graph(tiny_checkpoint, batch_size=2, width=32, height=32)
    graph.add("contextual", "ParticleRepulsionContextual", model=[CHECKPOINT, MODEL_OUTPUT], step_size=nan,
              iterations=2, stream="text", blocks="double", block_start=0.33, block_end=0.67, start=0.0, end=0.1)
    graph.save_latent(graph.stock_ksampler("sampled", steps=1, model="contextual"))
    assert "The input step_size is nan; give a finite number." in server.run_expecting_error(graph.nodes)
    assert_still_serves(server, tiny_checkpoint)


def prompt_source_graph(checkpoint: str, **changes) -> Graph:
    settings = dict(styles="ink\noil", subjects="a boat", images_per_prompt=1, trajectory_points=2, steps=3,
                    cfg=5.0, sampler_name="euler", scheduler="normal", seed=0, width=32, height=32)
    graph = Graph(checkpoint)
    graph.add("images", "ParticleRepulsionStyleLatentsFromPrompts", model=[CHECKPOINT, MODEL_OUTPUT],
              clip=[CHECKPOINT, CLIP_OUTPUT], **{**settings, **changes})
    add_trainer(graph, tagged("from-prompts"), overwrite=True)
    return graph


def test_a_prompt_plan_too_large_for_memory_is_refused_before_drawing(server, tiny_checkpoint):
    # 2 styles x 64 images x 20 trajectory points of 4x512x512 latents: 10 GiB, and days of drawing on a CPU
    graph = prompt_source_graph(tiny_checkpoint, images_per_prompt=64, trajectory_points=20, steps=40, width=4096,
                                height=4096)
    error = server.run_expecting_error(graph.nodes, timeout=60)
    assert "2560 training latents of 4x512x512 take 10240 MiB, over this node's 512 MiB" in error
    assert_still_serves(server, tiny_checkpoint)


def test_a_hostile_style_or_subject_line_is_refused_before_drawing(server, tiny_checkpoint):
    error = server.run_expecting_error(prompt_source_graph(tiny_checkpoint, styles="ink\n" + "o" * 300).nodes)
    assert "is longer than 256 characters" in error
    error = server.run_expecting_error(prompt_source_graph(tiny_checkpoint, subjects="a boat" * 200).nodes)
    assert "The subject line has 1200 characters; at most 1000 are allowed." in error
    assert_still_serves(server, tiny_checkpoint)
