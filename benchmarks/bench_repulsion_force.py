"""Benchmark: one batch repulsion evaluation against the thesis's per-particle Jacobian.

Ours is one forward and one backward pass of the embedder for the whole batch (a vector-Jacobian
product). The thesis's code built the Jacobian of every particle's embedding row by row: N x F backward
passes. Both compute R_i = (1/N) J_i^T grad_phi sum_j k(phi_i, phi_j), RBF kernel with median bandwidth,
on float32 latents of 4 x 64 x 64, with two embedders: the latent itself (F = 16384) and its 4 x 4
average-pooled grid (F = 64). The naive form only runs where its estimated time fits in a few seconds.
Each figure is a median over repeats, of wall-clock time and of this process's CPU time.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "repulsion_force.json"
sys.path.insert(0, str(REPO / "scripts"))

import comfy_host  # noqa: E402  (standard library only: registers the pack as `particle_repulsion`)

comfy_host.register_pack_namespace()

from particle_repulsion.kernels import Kernel, KernelSum, RBFKernel, repulsion_force  # noqa: E402

BATCH_SIZES = (8, 16, 64, 256)
LATENT_SHAPE = (4, 64, 64)
WARM_UPS = 2
REPEATS = 7
NAIVE_BUDGET_SECONDS = 8.0
NAIVE_PROBE_FEATURES = 32
TARGET_MS_AT_64 = 20.0
TARGET_SPEEDUP_AT_16 = 100.0

Embedder = Callable[[torch.Tensor], torch.Tensor]


def latent_embed(batch: torch.Tensor) -> torch.Tensor:
    return batch.flatten(1)


def pooled_embed(batch: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(batch, 4).flatten(1)


EMBEDDERS: dict[str, Embedder] = {"latent": latent_embed, "pooled 4x4": pooled_embed}


def naive_repulsion_force(latents: torch.Tensor, embed: Embedder, kernel: Kernel,
                          feature_limit: int | None = None
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


def _feature_gradient(features: torch.Tensor, kernel: Kernel) -> torch.Tensor:
    """d/dphi_i sum_j k(phi_i, phi_j) with the phi_j held fixed: [N, F]."""
    variable = features.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(kernel(variable, features).sum(), variable)
    return gradient


@dataclass(frozen=True)
class Timing:
    """Median milliseconds of wall-clock time and of this process's CPU time.

    On a shared machine the CPU time of a single-threaded run is the figure other processes disturb
    least; with several threads it also counts threads that spin while waiting.
    """

    wall_ms: float
    cpu_ms: float


def median_timing(run: Callable[[], object], warm_ups: int, repeats: int) -> Timing:
    for _ in range(warm_ups):
        run()
    wall_seconds, cpu_seconds = [], []
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        run()
        wall_seconds.append(time.perf_counter() - wall_start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return Timing(1e3 * statistics.median(wall_seconds), 1e3 * statistics.median(cpu_seconds))


def estimated_naive_cpu_ms(latents: torch.Tensor, embed: Embedder, kernel: Kernel) -> float:
    """CPU time of one particle's first few features, scaled to N x F backward passes."""
    features = embed(latents[:1]).shape[1]
    probe = min(features, NAIVE_PROBE_FEATURES)
    probe_timing = median_timing(lambda: naive_repulsion_force(latents[:1], embed, kernel, probe), 1, 3)
    return probe_timing.cpu_ms * latents.shape[0] * features / probe


def measure(count: int, embedder_name: str) -> dict:
    embed, kernel = EMBEDDERS[embedder_name], RBFKernel("median")
    latents = torch.randn(count, *LATENT_SHAPE, generator=torch.Generator().manual_seed(count))
    ours = median_timing(lambda: repulsion_force(latents, embed, KernelSum(kernel)), WARM_UPS, REPEATS)
    row = {"n": count, "embedder": embedder_name, "features": embed(latents[:1]).shape[1],
           "ours_ms": ours.wall_ms, "ours_cpu_ms": ours.cpu_ms, "naive_ms": None, "naive_cpu_ms": None,
           "speedup": None, "cpu_speedup": None, "max_relative_difference": None,
           "naive_estimate_cpu_ms": estimated_naive_cpu_ms(latents, embed, kernel)}
    if row["naive_estimate_cpu_ms"] <= 1e3 * NAIVE_BUDGET_SECONDS:
        repeats = 3 if row["naive_estimate_cpu_ms"] < 1e3 else 1
        naive = median_timing(lambda: naive_repulsion_force(latents, embed, kernel), 0, repeats)
        row.update(naive_ms=naive.wall_ms, naive_cpu_ms=naive.cpu_ms, speedup=naive.wall_ms / ours.wall_ms,
                   cpu_speedup=naive.cpu_ms / ours.cpu_ms,
                   max_relative_difference=relative_difference(latents, embed, kernel))
    return row


def relative_difference(latents: torch.Tensor, embed: Embedder, kernel: Kernel) -> float:
    """max |ours - naive| / max |naive|: both must compute the same force."""
    ours = repulsion_force(latents, embed, KernelSum(kernel))
    naive = naive_repulsion_force(latents, embed, kernel)
    return ((ours - naive).abs().max() / naive.abs().max()).item()


def targets(rows: list[dict]) -> dict:
    """Each target judged on wall-clock time (as asked) and on CPU time."""
    by_key = {(row["n"], row["embedder"]): row for row in rows}
    verdict = {}
    for clock, time_key, speedup_key in (("wall", "ours_ms", "speedup"), ("cpu", "ours_cpu_ms", "cpu_speedup")):
        speedup_16 = by_key[(16, "pooled 4x4")][speedup_key]
        verdict[clock] = {
            f"n64_within_{TARGET_MS_AT_64:g}ms": {name: by_key[(64, name)][time_key] <= TARGET_MS_AT_64
                                                 for name in EMBEDDERS},
            f"pooled_n16_speedup_at_least_{TARGET_SPEEDUP_AT_16:g}x": speedup_16 is not None
            and speedup_16 >= TARGET_SPEEDUP_AT_16,
        }
    return verdict


def print_table(rows: list[dict]) -> None:
    print(f"{'N':>4}  {'embedder':<11} {'F':>6}  {'ours ms':>8} {'(cpu)':>8}  {'naive ms':>9} {'(cpu)':>9}  "
          f"{'speed-up':>8} {'(cpu)':>6}  {'max rel diff':>12}")
    for row in rows:
        print(f"{row['n']:>4}  {row['embedder']:<11} {row['features']:>6}  {row['ours_ms']:8.2f} "
              f"{row['ours_cpu_ms']:8.2f}  {_cell(row['naive_ms'], 9, '.1f', 'skipped')} "
              f"{_cell(row['naive_cpu_ms'], 9, '.1f', 'skipped')}  {_cell(row['speedup'], 8, '.0f', suffix='x')} "
              f"{_cell(row['cpu_speedup'], 6, '.0f', suffix='x')}  {_cell(row['max_relative_difference'], 12, '.1e')}")
    print("naive skipped where its estimate (one particle's probe scaled to N x F passes) exceeds "
          f"{NAIVE_BUDGET_SECONDS:g} s of CPU time; estimates are in the JSON file.")


def _cell(value: float | None, width: int, number_format: str, missing: str = "-", suffix: str = "") -> str:
    text = missing if value is None else f"{value:{number_format}}{suffix}"
    return f"{text:>{width}}"


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
