"""Benchmark: how often the letters model draws the font a prompt names ("the letter R by Lobster").

The font embedder learns from exactly such images (Style Latents from Prompts labels every image with the
font its prompt names), so this share bounds how right its labels are. For every font and each letter of
`--letters`, one batch of N = 8 from the stock KSampler (the letters model's own settings); the font judge
(trained on clean renders, never used for steering) says which font each glyph is in.

    .host/venv/bin/python benchmarks/bench_letters_fidelity.py [--letters AGKRW] [--cfg 4] [--threads 1]

Prints one row per font and the mean; writes benchmarks/results/letters_fidelity.json and .md.
"""
from __future__ import annotations

import argparse
import json
import statistics

import letters  # noqa: F401  (ComfyUI in-process; the pack as particle_repulsion)
import comfy.utils
import nodes
import torch

from letters import pipeline
from letters.glyphs import caption
from letters.pipeline import SAMPLING

from common import RESULTS, markdown_table

BATCH = 8
SEED_BASE = 7


def named_font_share(model: pipeline.Letters, style_index: int, letter: str, seed: int, cfg: float) -> float:
    """The share of one batch of "the letter <letter> by <font>" at guidance `cfg` that the font judge puts in
    that font."""
    positive = model.encode(caption(letter, model.styles[style_index]))
    latent = nodes.KSampler().sample(model.model, seed, positive=positive, negative=model.encode(""),
                                     latent_image=model.empty_latent(BATCH), **{**SAMPLING, "cfg": cfg})[0]
    return (model.judge(model.images(latent)).styles == style_index).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--letters", default="AGKRW", help="letters to prompt (default %(default)s)")
    parser.add_argument("--cfg", type=float, default=SAMPLING["cfg"], help="guidance (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    comfy.utils.PROGRESS_BAR_ENABLED = False
    with torch.inference_mode():
        model = pipeline.load()
        shares = {style: statistics.fmean(named_font_share(model, index, letter, SEED_BASE + index, arguments.cfg)
                                          for letter in arguments.letters)
                  for index, style in enumerate(model.styles)}
    mean = statistics.fmean(shares.values())
    table = markdown_table(["font named in the prompt", "share drawn in it"],
                           [[style, f"{100 * share:.0f} %"] for style, share in shares.items()]
                           + [["mean", f"{100 * mean:.1f} %"]])
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "letters_fidelity.json").write_text(json.dumps(
        {"letters": arguments.letters, "cfg": arguments.cfg, "batch": BATCH, "shares": shares, "mean": mean},
        indent=2))
    (RESULTS / "letters_fidelity.md").write_text(f"# Letters model: fonts drawn as named\n\n{table}\n")
    print(f"wrote {RESULTS / 'letters_fidelity.json'} and .md")


if __name__ == "__main__":
    main()
