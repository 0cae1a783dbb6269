"""`make demo`'s graph on the letters model runs in the real ComfyUI server and gives 8 glyphs per run."""
import sys

import numpy as np

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))


def test_the_demo_graph_runs_on_the_letters_model_in_the_server(server):
    import demo
    from letters import install as letters_install
    from letters.pipeline import SAMPLING

    letters_install.install()
    names = {"unet": letters_install.UNET_NAME, "clip": letters_install.CLIP_NAME, "vae": letters_install.VAE_NAME,
             "fonts": letters_install.FONTS_EMBEDDER_NAME}
    sampling = {**{key: SAMPLING[key] for key in ("cfg", "sampler_name", "scheduler", "denoise")}, "steps": 2}
    result = server.run(demo.demo_graph(server.object_info(), names, sampling), timeout=300)
    batches = {run: np.stack(result.images(f"R_{index}_save")) for index, run in enumerate(demo.RUNS)}
    assert {run: batch.shape for run, batch in batches.items()} == {run: (demo.BATCH, 64, 64, 3) for run in demo.RUNS}
    assert not np.array_equal(batches["plain"], batches["repulsion in the font embedder"])
