"""Retrain every part of the letters model, seeded, on the CPU (one thread), and write the committed files.

1. styles: a first font judge on the candidate fonts; fonts it confuses on held-out renders are merged.
2. judges: the letter judge and the font judge (over styles), checked on held-out renders.
3. autoencoder: the TAESD-format VAE (built encoder, trained decoder).
4. conditioning: every caption through the tiny checkpoint's CLIP-L, as CLIPTextEncode does (cached).
5. transformer: the SD3-architecture MMDiT, flow matching as ComfyUI samples SD3.
6. font_embedder: the pack's Style Latents from Prompts + Train Style Embedder on the model's outputs.

    .host/venv/bin/python benchmarks/letters/train.py [--only STAGE ...]

Needs the fonts of `fonts.py` (`python3 benchmarks/letters/fonts.py` prints the apt-get command).
Writes benchmarks/weights/letters/ (see install.py) and prints the CPU time of every stage.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the letters package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import letters  # noqa: E402,F401  (puts ComfyUI and scripts/ on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from letters import autoencoder, conditioning, font_embedder, judges, pipeline, transformer  # noqa: E402
from letters.fonts import CANDIDATE_FONTS, missing_font_packages, install_command  # noqa: E402
from letters.glyphs import LETTERS, GlyphSet, caption, render_set  # noqa: E402
from letters.install import (FONT_JUDGE_FILE, FONTS_EMBEDDER_FILE, HELDOUT_FILE, LETTER_JUDGE_FILE,  # noqa: E402
                             MARK_KEY, STYLES_FILE, TRANSFORMER_FILE, TRANSFORMER_MARK, VAE_FILE, VAE_MARK, WEIGHTS,
                             install)
from letters.models import load_projection, save_judge  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import comfy_host  # noqa: E402

SEED = 0
STAGES = ("styles", "judges", "autoencoder", "conditioning", "transformer", "font_embedder")
CACHE = comfy_host.HOST_DIR / "letters_cache"
# Render seeds: every set is its own draw of the jitter.
CANDIDATE_TRAIN, CANDIDATE_VALIDATION, JUDGE_TRAIN, HELDOUT, GENERATOR_TRAIN = 1, 2, 3, 4, 5
CANDIDATE_RENDERS, VALIDATION_RENDERS, JUDGE_RENDERS, HELDOUT_RENDERS, GENERATOR_RENDERS = 8, 2, 12, 2, 24
MERGE_THRESHOLD = 0.1  # mutual confusion above which two fonts are one style
JUDGE_EPOCHS = 8
DECODER_STEPS, DECODER_BATCH = 1000, 16
TRANSFORMER_SCHEDULE = transformer.Schedule(steps=8000, batch=64, learning_rate=1e-3, style_caption_rate=0.3,
                                            unconditional_rate=0.1)


def log_to(stage: str):
    return lambda message: print(f"[{stage}] {message}", flush=True)


def style_members(assignment: list[int]) -> list[list[int]]:
    """Candidate font indices of every style, in style order."""
    return [[font for font, style in enumerate(assignment) if style == index] for index in range(max(assignment) + 1)]


def zipf_frequencies(count: int) -> list[float]:
    """Style k's share of the generator's training data: proportional to 1 / (k + 1)."""
    weights = [1.0 / (rank + 1) for rank in range(count)]
    return [weight / sum(weights) for weight in weights]


def fit_styles() -> dict:
    """Merge the candidate fonts that a first font judge confuses; the styles' record (JSON-able)."""
    log = log_to("styles")
    train = render_set(CANDIDATE_FONTS, CANDIDATE_RENDERS, CANDIDATE_TRAIN)
    validation = render_set(CANDIDATE_FONTS, VALIDATION_RENDERS, CANDIDATE_VALIDATION)
    judge = judges.train_judge(train.ink, train.fonts, len(CANDIDATE_FONTS), SEED, JUDGE_EPOCHS, log)
    matrix = judges.confusion(judge, validation.ink, validation.fonts, len(CANDIDATE_FONTS))
    members = style_members(judges.merge_confused_styles(matrix, MERGE_THRESHOLD))
    merged = [[CANDIDATE_FONTS[font].name for font in group] for group in members if len(group) > 1]
    log(f"{len(CANDIDATE_FONTS)} fonts -> {len(members)} styles; merged: {merged}")
    return {"styles": [CANDIDATE_FONTS[group[0]].name for group in members],
            "style_fonts": [[CANDIDATE_FONTS[font].name for font in group] for group in members],
            "frequencies": zipf_frequencies(len(members)),
            "candidate_font_accuracy": judges.accuracy(judge, validation.ink, validation.fonts),
            "merge_threshold": MERGE_THRESHOLD}


def as_styles(glyphs: GlyphSet, font_styles: list[int]) -> GlyphSet:
    """The same glyphs labelled by style instead of candidate font."""
    return GlyphSet(glyphs.ink, glyphs.letters, torch.tensor(font_styles)[glyphs.fonts])


def fit_judges(record: dict, font_styles: list[int]) -> dict:
    """Train and save both judges; write the held-out renders; their held-out accuracies."""
    log = log_to("judges")
    train = as_styles(render_set(CANDIDATE_FONTS, JUDGE_RENDERS, JUDGE_TRAIN), font_styles)
    heldout = as_styles(render_set(CANDIDATE_FONTS, HELDOUT_RENDERS, HELDOUT), font_styles)
    letter_judge = judges.train_judge(train.ink, train.letters, len(LETTERS), SEED, JUDGE_EPOCHS, log)
    font_judge = judges.train_judge(train.ink, train.fonts, len(record["styles"]), SEED + 1, JUDGE_EPOCHS, log)
    save_judge(letter_judge, LETTER_JUDGE_FILE)
    save_judge(font_judge, FONT_JUDGE_FILE)
    np.savez_compressed(HELDOUT_FILE, ink=np.uint8(np.round(heldout.ink.numpy() * 255)),
                        letters=heldout.letters.numpy(), styles=heldout.fonts.numpy())
    figures = {"letter_judge_heldout_accuracy": judges.accuracy(letter_judge, heldout.ink, heldout.letters),
               "font_judge_heldout_accuracy": judges.accuracy(font_judge, heldout.ink, heldout.fonts)}
    log(str(figures))
    return figures


def generator_glyphs(font_styles: list[int]) -> GlyphSet:
    return as_styles(render_set(CANDIDATE_FONTS, GENERATOR_RENDERS, GENERATOR_TRAIN), font_styles)


def fit_autoencoder(glyphs: GlyphSet) -> dict:
    log = log_to("autoencoder")
    projection = autoencoder.fit_projection(glyphs.ink)
    latents = projection.encode(glyphs.ink)
    decoder = autoencoder.train_decoder(latents, glyphs.ink, DECODER_STEPS, DECODER_BATCH, SEED, log)
    state = autoencoder.vae_file_state(projection, decoder)
    save_file({name: tensor.to(torch.float16).contiguous() for name, tensor in state.items()}, str(VAE_FILE),
              metadata={MARK_KEY: VAE_MARK})
    heldout = torch.from_numpy(np.load(HELDOUT_FILE)["ink"]).float() / 255
    figures = {"heldout_psnr_db": autoencoder.reconstruction_psnr(decoder, projection, heldout)}
    log(str(figures))
    return figures


def caption_table(styles: list[str]) -> list[str]:
    """Every caption: "" first, then per letter its plain caption and one per style."""
    return [""] + [text for letter in LETTERS for text in [caption(letter)] + [caption(letter, s) for s in styles]]


def encode_captions(styles: list[str]) -> dict:
    """Context and pooled conditioning of `caption_table(styles)`, cached in the host folder."""
    texts = caption_table(styles)
    cache = CACHE / "captions.pt"
    if cache.is_file():
        cached = torch.load(cache)
        if cached["texts"] == texts:
            return cached
    clip = conditioning.load_clip(install(folders=("text_encoders",))["text_encoders"])
    context, pooled = conditioning.encode(clip, texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    encoded = {"texts": texts, "context": context, "pooled": pooled}
    torch.save(encoded, cache)
    return encoded


def captioned_latents(glyphs: GlyphSet, record: dict, encoded: dict
                      ) -> tuple[transformer.CaptionedLatents, transformer.InputStandardisation]:
    """The generator's training data (latents through the committed VAE's encoder, Zipf style weights,
    standardised conditioning) and the standardisation that export folds into the file."""
    latents = load_projection().encode(glyphs.ink)
    styles = len(record["styles"])
    per_letter = 1 + styles
    plain = 1 + glyphs.letters * per_letter
    pairs = torch.stack([plain, plain + 1 + glyphs.fonts], dim=1)
    style_counts = torch.bincount(glyphs.fonts, minlength=styles).float()
    weights = torch.tensor(record["frequencies"])[glyphs.fonts] / style_counts[glyphs.fonts]
    standardise = transformer.InputStandardisation.fit(encoded["context"], encoded["pooled"])
    return transformer.CaptionedLatents(latents, pairs, weights, standardise.context(encoded["context"]),
                                        standardise.pooled(encoded["pooled"]), empty=0), standardise


def fit_transformer(data: transformer.CaptionedLatents, standardise: transformer.InputStandardisation) -> dict:
    log = log_to("transformer")

    def save(model) -> None:
        save_file(transformer.export_state(model, standardise), str(TRANSFORMER_FILE),
                  metadata={MARK_KEY: TRANSFORMER_MARK})

    model, losses = transformer.train_mmdit(data, TRANSFORMER_SCHEDULE, SEED, log, checkpoint=save)
    save(model)
    return {"steps": TRANSFORMER_SCHEDULE.steps, "batch": TRANSFORMER_SCHEDULE.batch,
            "final_loss": losses[-1], "parameters": sum(p.numel() for p in model.parameters())}


def fit_font_embedder() -> dict:
    with torch.inference_mode():
        report = font_embedder.train_font_embedder(pipeline.load(), FONTS_EMBEDDER_FILE)
    log_to("font_embedder")(report)
    return {"report": report}


def timed(seconds: dict, stage: str, run):
    started = time.process_time()
    outcome = run()
    seconds[stage] = time.process_time() - started
    print(f"[{stage}] {seconds[stage]:.0f} CPU-s", flush=True)
    return outcome


def save_record(record: dict, seconds: dict) -> None:
    """Write the styles record with the CPU seconds so far (after every stage, so a stopped run keeps them)."""
    record["cpu_seconds"] = {**seconds, "total": sum(value for key, value in seconds.items() if key != "total")}
    record["torch"] = torch.__version__
    STYLES_FILE.write_text(json.dumps(record, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", nargs="+", choices=STAGES, default=STAGES, help="stages to run (default: all)")
    arguments = parser.parse_args()
    missing = missing_font_packages()
    if missing:
        print(f"[letters] fonts are missing; install them as root:\n{install_command(missing)}")
        return 1
    torch.set_num_threads(1)
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    record = json.loads(STYLES_FILE.read_text()) if STYLES_FILE.is_file() else {}
    seconds = record.get("cpu_seconds", {})
    if "styles" in arguments.only:
        record = timed(seconds, "styles", fit_styles)
        save_record(record, seconds)
    font_styles = [next(index for index, fonts in enumerate(record["style_fonts"]) if font.name in fonts)
                   for font in CANDIDATE_FONTS]
    if "judges" in arguments.only:
        record["judges"] = timed(seconds, "judges", lambda: fit_judges(record, font_styles))
        save_record(record, seconds)
    glyphs = generator_glyphs(font_styles)
    if "autoencoder" in arguments.only:
        record["autoencoder"] = timed(seconds, "autoencoder", lambda: fit_autoencoder(glyphs))
        save_record(record, seconds)
    if "conditioning" in arguments.only or "transformer" in arguments.only:
        encoded = timed(seconds, "conditioning", lambda: encode_captions(record["styles"]))
    if "transformer" in arguments.only:
        data, standardise = captioned_latents(glyphs, record, encoded)
        record["transformer"] = timed(seconds, "transformer", lambda: fit_transformer(data, standardise))
        save_record(record, seconds)
    if "font_embedder" in arguments.only:
        record["font_embedder"] = timed(seconds, "font_embedder", fit_font_embedder)
    save_record(record, seconds)
    print(json.dumps(record["cpu_seconds"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
