"""Benchmark: what one repulsion evaluation adds to one step of a real-size SD1.5 UNet, in time and memory.

Issue 11's cost targets: each objective and built-in embedder adds at most 3% to one evaluation of a
real-size SD1.5 UNet (real config, random weights, 512 px, batch 8, CPU), the CLIP vision embedder at
most 15%. Everything runs in float32 on the CPU under `torch.inference_mode()`, as inside ComfyUI.

- The UNet: ComfyUI's own `UNetModel` with the SD1.5 architecture (`comfy.supported_models.SD15`'s
  config plus SD1.5's sizes; ComfyUI's detection confirms it is SD15, 859.5 M parameters), seeded random
  weights, one evaluation of 8 latents of 64 x 64 with 77 tokens of CLIP-L context. A sampler step with
  CFG evaluates it on 16 latents (cond and uncond), so the ratios below are twice the real share.
- The repulsion: `kernels.repulsion(latents, embedder, objective)`, the embedder's forward and backward
  (one vector-Jacobian product) for the whole batch plus the objective, on 8 latents of 4 x 64 x 64:
  kernel_sum and log_vendi (RBF, median bandwidth) with every built-in embedder, collision with a style
  classifier's class probabilities (`StyleProbabilities`, random weights), log_vendi with the CLIP vision
  embedder (a ViT-L/14 with ComfyUI's `clip_vision_config_vitl.json` and random weights, behind a random
  TAESD decoder or the SD1.5 latent-to-RGB factors, at CLIP's own 224 px and at the node's smaller sizes).
- Time, interleaved: rounds U c1 c2 ... U c1 c2 ... U. In each round, a case's ratio is its time over the
  mean of the two UNet evaluations around it, so a machine that slows down or speeds up between rounds
  moves both; the reported ratio is the median over rounds. Cheap cases repeat until 0.5 s has passed.
- Memory: the peak of the bytes that torch's CPU allocator holds during one call, above what it held
  when the call began, summed from the allocation and free events `torch.profiler` records
  (`profile_memory=True`). Exact and independent of machine load, unlike RSS (the allocator keeps freed
  pages) or tracemalloc (blind to torch's allocator). Given in MiB, as a multiple of the latent batch's
  own size (8 x 4 x 64 x 64 float32 = 0.5 MiB) and as a share of the UNet evaluation's own peak. The
  CLIP embedder's weights (a float32 copy) are resident, not per step: listed apart.

    .host/venv/bin/python benchmarks/bench_cost.py [--threads auto|1|2] [--rounds 3]

Prints the table and writes benchmarks/results/cost.md and cost.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from common import REPO, RESULTS, markdown_table  # puts scripts/ and ComfyUI on the path, the pack registered

import tiny_models  # noqa: E402
import tiny_taesd  # noqa: E402

import comfy.clip_model  # noqa: E402
import comfy.latent_formats  # noqa: E402
import comfy.model_detection  # noqa: E402
import comfy.ops  # noqa: E402
import comfy.supported_models  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402
from comfy.taesd.taesd import Decoder as TAESDDecoder  # noqa: E402
from tiny_clip_vision import vit_l_config  # noqa: E402

from particle_repulsion.embedders import (  # noqa: E402
    EMBEDDER_NAMES, StyleClassifier, StyleProbabilities, build_embedder)
from particle_repulsion.embedders.clip_vision import (  # noqa: E402
    ClipVisionEmbedder, FrozenVisionTower, ImageDecoder, latent_rgb_decoder)
from particle_repulsion.kernels import make_objective, repulsion  # noqa: E402
from particle_repulsion.nodes.clip_vision_embedder import CLIP_MEAN, CLIP_STD, TAESD_UPSCALE  # noqa: E402

BATCH, LATENT_CHANNELS, LATENT_SIDE, CONTEXT_TOKENS, CONTEXT_WIDTH = 8, 4, 64, 77, 768
# SD1.5's sizes, which detection reads from a checkpoint's keys; the rest is comfy.supported_models.SD15's.
SD15_SIZES = {"num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
              "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
              "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
BUILTIN_BUDGET, CLIP_BUDGET = 0.03, 0.15
CLIP_CASES = (("TAESD", 224), ("TAESD", 140), ("TAESD", 112), ("latent_rgb", 224), ("latent_rgb", 112))
STYLE_CLASSES = 8
MIN_TIMED_SECONDS = 0.5
MIB = 2**20

Step = Callable[[], object]


@dataclass(frozen=True)
class Case:
    """One repulsion configuration: what it measures, its budget and the call that runs it."""

    embedder: str
    objective: str
    budget: float
    run: Step
    resident_bytes: int = 0


def sd15_unet() -> tuple[UNetModel, int]:
    """ComfyUI's UNetModel with the SD1.5 architecture and seeded random float32 weights, and its parameter count."""
    config = {**tiny_models.TINY_SD15_UNET, **comfy.supported_models.SD15.unet_config,
              **comfy.supported_models.SD15.unet_extra_config, **SD15_SIZES}
    detected = comfy.model_detection.model_config_from_unet_config(config)
    if not isinstance(detected, comfy.supported_models.SD15):
        raise RuntimeError(f"ComfyUI detects this UNet config as {type(detected).__name__}, not SD15")
    with torch.device("meta"):
        unet = UNetModel(**config, operations=comfy.ops.disable_weight_init)
    return filled(unet), sum(parameter.numel() for parameter in unet.parameters())


def filled(module: torch.nn.Module) -> torch.nn.Module:
    """`module` (built on the meta device) on the CPU with every tensor from `tiny_models.deterministic_tensor`."""
    module = module.to_empty(device="cpu")
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            tensor.copy_(tiny_models.deterministic_tensor(name, tensor.shape))
    return module.eval()


def unet_step(unet: UNetModel) -> Step:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(BATCH, LATENT_CHANNELS, LATENT_SIDE, LATENT_SIDE, generator=generator)
    context = torch.randn(BATCH, CONTEXT_TOKENS, CONTEXT_WIDTH, generator=generator)
    timesteps = torch.full((BATCH,), 500.0)
    return lambda: unet(latents, timesteps, context)


def repulsion_step(embed, objective_name: str) -> Step:
    latents = torch.randn(BATCH, LATENT_CHANNELS, LATENT_SIDE, LATENT_SIDE, generator=torch.Generator().manual_seed(1))
    objective = make_objective(objective_name, "rbf")
    return lambda: repulsion(latents, embed, objective)


def builtin_cases() -> list[Case]:
    """kernel_sum and log_vendi with every built-in embedder; collision with class probabilities."""
    sd15 = comfy.latent_formats.SD15()
    cases = []
    for name in EMBEDDER_NAMES:
        embedder = build_embedder(name, LATENT_CHANNELS, latent_rgb_factors=sd15.latent_rgb_factors,
                                  latent_rgb_bias=sd15.latent_rgb_factors_bias)
        cases += [Case(name, objective, BUILTIN_BUDGET, repulsion_step(embedder, objective))
                  for objective in ("kernel_sum", "log_vendi")]
    torch.manual_seed(2)
    classifier = StyleClassifier(LATENT_CHANNELS, [f"style {index}" for index in range(STYLE_CLASSES)],
                                 sigma_min=0.03, sigma_max=14.6).requires_grad_(False)
    return cases + [Case("style classifier probabilities", "collision", BUILTIN_BUDGET,
                         repulsion_step(StyleProbabilities(classifier), "collision"))]


def clip_cases() -> list[Case]:
    """log_vendi with the CLIP vision embedder: ViT-L/14 random weights, random TAESD or latent-to-RGB decoder."""
    with torch.device("meta"):
        source = comfy.clip_model.CLIPVisionModelProjection(vit_l_config(), torch.float32, "meta",
                                                           comfy.ops.disable_weight_init)
    tower = FrozenVisionTower(filled(source))
    del source
    taesd = TAESDDecoder(latent_channels=LATENT_CHANNELS)
    taesd.load_state_dict(tiny_taesd.random_decoder_state(LATENT_CHANNELS))
    decoders = {"TAESD": ImageDecoder(taesd.requires_grad_(False).eval(), LATENT_CHANNELS, TAESD_UPSCALE, "TAESD"),
                "latent_rgb": latent_rgb_decoder(comfy.latent_formats.SD15().latent_rgb_factors,
                                                 comfy.latent_formats.SD15().latent_rgb_factors_bias)}
    cases = []
    for decoder_name, size in CLIP_CASES:
        embedder = ClipVisionEmbedder(decoders[decoder_name], tower, CLIP_MEAN, CLIP_STD, size)
        cases.append(Case(f"clip_vision ({decoder_name}, {size} px)", "log_vendi", CLIP_BUDGET,
                          repulsion_step(embedder, "log_vendi"), resident_bytes=module_bytes(embedder)))
    return cases


def module_bytes(module: torch.nn.Module) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in [*module.parameters(), *module.buffers()])


def seconds_per_call(step: Step, minimum_seconds: float = 0.0) -> float:
    """Mean wall-clock seconds of `step`, repeated until `minimum_seconds` have passed (at least once)."""
    calls, start = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= minimum_seconds:
            return elapsed / calls


def peak_extra_bytes(step: Step) -> int:
    """Peak bytes held by torch's CPU allocator during `step`, above those held when it began."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    changes = sorted((event.start_ns(), event.nbytes()) for event in profiler.profiler.kineto_results.events()
                     if event.name() == "[memory]")
    held = peak = 0
    for _, change in changes:
        held += change
        peak = max(peak, held)
    return peak


def interleaved_seconds(unet: Step, cases: list[Case], rounds: int) -> tuple[list[float], dict[str, list[float]]]:
    """UNet seconds at each of the `rounds + 1` round boundaries, and each case's seconds in each round."""
    unet_seconds = [seconds_per_call(unet)]
    case_seconds = {case_key(case): [] for case in cases}
    for round_index in range(rounds):
        for case in cases:
            case_seconds[case_key(case)].append(seconds_per_call(case.run, MIN_TIMED_SECONDS))
        unet_seconds.append(seconds_per_call(unet))
        print(f"round {round_index + 1}/{rounds}: UNet {unet_seconds[-2]:.1f} s before, {unet_seconds[-1]:.1f} s after",
              flush=True)
    return unet_seconds, case_seconds


def round_ratios(case_seconds: list[float], unet_seconds: list[float]) -> list[float]:
    """A case's time in each round over the mean of the UNet evaluations before and after that round."""
    return [seconds / ((unet_seconds[index] + unet_seconds[index + 1]) / 2)
            for index, seconds in enumerate(case_seconds)]


def case_key(case: Case) -> str:
    return f"{case.embedder} / {case.objective}"


def result_rows(cases: list[Case], case_seconds: dict[str, list[float]], unet_seconds: list[float],
                unet_peak: int) -> list[dict]:
    """One row per case: median ratio, per-round figures and the memory measured now (one more call)."""
    latent_bytes = BATCH * LATENT_CHANNELS * LATENT_SIDE * LATENT_SIDE * 4
    rows = []
    for case in cases:
        ratios = round_ratios(case_seconds[case_key(case)], unet_seconds)
        peak = peak_extra_bytes(case.run)
        rows.append({"embedder": case.embedder, "objective": case.objective, "budget": case.budget,
                     "ratio": statistics.median(ratios), "ratios_per_round": ratios,
                     "seconds_per_round": case_seconds[case_key(case)], "peak_extra_bytes": peak,
                     "peak_extra_mib": peak / MIB, "peak_per_latent_batch": peak / latent_bytes,
                     "peak_share_of_unet": peak / unet_peak, "resident_mib": case.resident_bytes / MIB,
                     "met": statistics.median(ratios) <= case.budget})
    return rows


def markdown(rows: list[dict], header: dict) -> str:
    lines = [f"# Repulsion cost against one SD1.5 UNet evaluation (batch {BATCH}, 512 px, CPU float32)", "",
             f"torch {header['torch']}, {header['threads']} thread(s), 1-minute load {header['load_before']:.1f} "
             f"before and {header['load_after']:.1f} after on {header['cpu_count']} cores; UNet "
             f"{header['unet_parameters'] / 1e6:.1f} M parameters, {statistics.median(header['unet_seconds']):.1f} s "
             f"per evaluation (median of {len(header['unet_seconds'])}), peak extra "
             f"{header['unet_peak_extra_mib']:.0f} MiB.", "",
             markdown_table(
                 ["embedder", "objective", "time / UNet step", "budget", "met", "ms per call", "peak extra MiB",
                  "x latent batch", "share of UNet peak", "resident MiB"],
                 [[row["embedder"], row["objective"], f"{row['ratio']:.2%}", f"{row['budget']:.0%}",
                   "yes" if row["met"] else "NO", f"{1e3 * statistics.median(row['seconds_per_round']):.1f}",
                   f"{row['peak_extra_mib']:.1f}", f"{row['peak_per_latent_batch']:.1f}",
                   f"{row['peak_share_of_unet']:.2%}", f"{row['resident_mib']:.0f}"] for row in rows])]
    return "\n".join(lines) + "\n"


def chosen_threads(requested: str) -> int:
    """`requested` threads, or for "auto" 2 on a quiet machine (1-minute load below 1) and 1 otherwise."""
    if requested != "auto":
        return int(requested)
    return 2 if os.getloadavg()[0] < 1.0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="auto", help="torch CPU threads, or auto (default)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    arguments = parser.parse_args()
    torch.set_num_threads(chosen_threads(arguments.threads))
    load_before = os.getloadavg()[0]
    unet, unet_parameters = sd15_unet()
    step = unet_step(unet)
    cases = builtin_cases() + clip_cases()  # built outside inference mode, as the pack builds embedders
    with torch.inference_mode():
        unet_peak = peak_extra_bytes(step)  # also the UNet's warm-up
        for case in cases:
            case.run()  # warm-up
        unet_seconds, case_seconds = interleaved_seconds(step, cases, arguments.rounds)
        rows = result_rows(cases, case_seconds, unet_seconds, unet_peak)
    header = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "load_before": load_before,
              "load_after": os.getloadavg()[0], "unet_parameters": unet_parameters, "unet_seconds": unet_seconds,
              "unet_peak_extra_mib": unet_peak / MIB, "batch": BATCH, "latent_side": LATENT_SIDE,
              "rounds": arguments.rounds}
    table = markdown(rows, header)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cost.md").write_text(table)
    (RESULTS / "cost.json").write_text(json.dumps({**header, "rows": rows}, indent=2))
    print(f"wrote {(RESULTS / 'cost.md').relative_to(REPO)} and cost.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
