"""Benchmark: one batch repulsion evaluation against the thesis's per-particle Jacobian.

Ours is one forward and one backward pass of the embedder for the whole batch (a vector-Jacobian
product). The thesis's code built the Jacobian of every particle's embedding row by row: N x F backward
passes. Both compute R_i = (1/N) J_i^T grad_phi sum_j k(phi_i, phi_j), RBF kernel with median bandwidth,
on float32 latents of 4 x 64 x 64, with two embedders: the latent itself (F = 16384) and its 4 x 4
average-pooled grid (F = 64). The naive form only runs where its estimated time fits in a few seconds.

    /tmp/pure-venv/bin/python benchmarks/bench_repulsion_force.py [--threads T]

T defaults to torch's own thread count. Prints a table and writes benchmarks/results/repulsion_force.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "repulsion_force.json"
sys.path.insert(0, str(REPO / "scripts"))

import comfy_host  # noqa: E402  (standard library only: registers the pack as `particle_repulsion`)

comfy_host.register_pack_namespace()

from particle_repulsion.kernels import RBFKernel, repulsion_force  # noqa: E402

BATCH_SIZES = (8, 16, 64, 256)
LATENT_SHAPE = (4, 64, 64)
WARM_UPS = 2
REPEATS = 7
NAIVE_BUDGET_SECONDS = 5.0
NAIVE_PROBE_FEATURES = 32
TARGET_MS_AT_64 = 20.0
TARGET_SPEEDUP_AT_16 = 100.0

Embedder = Callable[[torch.Tensor], torch.Tensor]


def latent_embed(batch: torch.Tensor) -> torch.Tensor:
    return batch.flatten(1)


def pooled_embed(batch: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(batch, 4).flatten(1)


EMBEDDERS: dict[str, Embedder] = {"latent": latent_embed, "pooled 4x4": pooled_embed}


def naive_repulsion_force(latents: torch.Tensor, embed: Embedder, kernel, feature_limit: int | None = None
                          ) -> torch.Tensor:
    """The thesis's algorithm: for each particle and each embedding feature, one backward pass.

    feature_limit stops after that many features per particle (used to time a probe).
    """
    count = latents.shape[0]
    feature_gradient = _feature_gradient(embed(latents).detach(), kernel)
    force = torch.zeros_like(latents)
    for index in range(count):
        particle = latents[index:index + 1].clone().requires_grad_(True)
        embedding = embed(particle)[0]
        for feature in range(min(embedding.shape[0], feature_limit or embedding.shape[0])):
            (jacobian_row,) = torch.autograd.grad(embedding[feature], particle, retain_graph=True)
            force[index] += feature_gradient[index, feature] * jacobian_row[0]
    return force / count


def _feature_gradient(features: torch.Tensor, kernel) -> torch.Tensor:
    """d/dphi_i sum_j k(phi_i, phi_j) with the phi_j held fixed: [N, F]."""
    variable = features.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(kernel(variable, features).sum(), variable)
    return gradient


def median_milliseconds(run: Callable[[], object], warm_ups: int, repeats: int) -> float:
    for _ in range(warm_ups):
        run()
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        durations.append(time.perf_counter() - start)
    return 1e3 * statistics.median(durations)


def estimated_naive_milliseconds(latents: torch.Tensor, embed: Embedder, kernel) -> float:
    """Time one particle's first few features and scale to N x F backward passes."""
    features = embed(latents[:1]).shape[1]
    probe = min(features, NAIVE_PROBE_FEATURES)
    probe_ms = median_milliseconds(lambda: naive_repulsion_force(latents[:1], embed, kernel, probe), 1, 3)
    return probe_ms * latents.shape[0] * features / probe


def measure(count: int, embedder_name: str) -> dict:
    embed, kernel = EMBEDDERS[embedder_name], RBFKernel("median")
    latents = torch.randn(count, *LATENT_SHAPE, generator=torch.Generator().manual_seed(count))
    ours_ms = median_milliseconds(lambda: repulsion_force(latents, embed, kernel), WARM_UPS, REPEATS)
    row = {"n": count, "embedder": embedder_name, "features": embed(latents[:1]).shape[1],
           "ours_ms": ours_ms, "naive_ms": None, "speedup": None, "max_relative_difference": None,
           "naive_estimate_ms": estimated_naive_milliseconds(latents, embed, kernel)}
    if row["naive_estimate_ms"] <= 1e3 * NAIVE_BUDGET_SECONDS:
        repeats = 3 if row["naive_estimate_ms"] < 1e3 else 1
        row["naive_ms"] = median_milliseconds(lambda: naive_repulsion_force(latents, embed, kernel), 0, repeats)
        row["speedup"] = row["naive_ms"] / ours_ms
        row["max_relative_difference"] = relative_difference(latents, embed, kernel)
    return row


def relative_difference(latents: torch.Tensor, embed: Embedder, kernel) -> float:
    """max |ours - naive| / max |naive|: both must compute the same force."""
    ours = repulsion_force(latents, embed, kernel)
    naive = naive_repulsion_force(latents, embed, kernel)
    return ((ours - naive).abs().max() / naive.abs().max()).item()


def targets(rows: list[dict]) -> dict:
    by_key = {(row["n"], row["embedder"]): row for row in rows}
    at_64 = {name: by_key[(64, name)]["ours_ms"] <= TARGET_MS_AT_64 for name in EMBEDDERS}
    speedup_16 = by_key[(16, "pooled 4x4")]["speedup"]
    return {f"n64_within_{TARGET_MS_AT_64:g}ms": at_64,
            f"pooled_n16_speedup_at_least_{TARGET_SPEEDUP_AT_16:g}x": bool(speedup_16 and
                                                                         speedup_16 >= TARGET_SPEEDUP_AT_16)}


def print_table(rows: list[dict]) -> None:
    print(f"{'N':>4}  {'embedder':<11} {'F':>6}  {'ours ms':>9}  {'naive ms':>10}  {'speed-up':>9}  {'max rel diff':>12}")
    for row in rows:
        naive = f"{row['naive_ms']:10.1f}" if row["naive_ms"] is not None else f"{'skipped':>10}"
        speedup = f"{row['speedup']:8.0f}x" if row["speedup"] is not None else f"{'-':>9}"
        difference = f"{row['max_relative_difference']:12.1e}" if row["max_relative_difference"] is not None \
            else f"{'-':>12}"
        print(f"{row['n']:>4}  {row['embedder']:<11} {row['features']:>6}  {row['ours_ms']:9.2f}  "
              f"{naive}  {speedup}  {difference}")
    print("naive skipped where its estimate (one particle's probe scaled to N x F passes) exceeds "
          f"{NAIVE_BUDGET_SECONDS:g} s; estimates are in the JSON file.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch CPU threads (default: torch's own default, %(default)s here)")
    torch.set_num_threads(parser.parse_args().threads)
    load_before = os.getloadavg()[0]
    rows = [measure(count, name) for count in BATCH_SIZES for name in EMBEDDERS]
    load_after = os.getloadavg()[0]
    print(f"threads {torch.get_num_threads()}, 1-minute load average {load_before:.1f} before, "
          f"{load_after:.1f} after (other processes slow every figure down)")
    print_table(rows)
    verdict = targets(rows)
    print(json.dumps(verdict, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "load_average": [load_before, load_after],
        "latent_shape": LATENT_SHAPE, "repeats": REPEATS, "rows": rows, "targets": verdict}, indent=2))
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
