"""Benchmark: the repulsion nodes exactly as they ship, on every model family, against known truth.

Every batch is drawn through ComfyUI's own sampler stack (`common.sample_batch`) from a MODEL whose
prediction is an exact (or trained) denoiser, under each model sampling of `exact_models.FAMILIES`
(EPS karras/normal, v, v with zero terminal SNR, SD3 and Flux flow, 4-step turbo settings), with each
family's samplers. "node defaults" is the Repulsive Sampler built from its own widget defaults
(`common.node_repulsion`), nothing else.

Data and figures (quality next to diversity, always):
- single Gaussian, zero mean and a smooth non-zero mean, [4, 8, 8], std 0.5: final per-element variance
  across the batch, as a ratio to i.i.d. (there is no mode to find: anything added is left-over push or
  noise a user would see);
- 8 equal Gaussians in [4, 8, 8] (the original mixture) and 8 unequal ones (weights 0.7^k) in a
  16-channel [16, 8, 8] latent: modes covered and the change of mean log-likelihood;
- the digits model of `train_digits.py` (N = 10): classes covered and the judge's confidence.

Tables: (1) node defaults against i.i.d. per family, averaged over its samplers; (2) per sampler;
(3) batch sizes 4, 8 and 16; (4) strength and objective sweeps on three families, with a Pareto figure.

    .host/venv/bin/python benchmarks/bench_defaults.py [--seeds 16] [--threads 1]

Writes benchmarks/results/defaults.json, defaults.md and defaults_pareto.png.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
from torch import Tensor

from common import IID, Method, Panel, markdown_table, node_repulsion, parse_arguments, sample_batch, write_results
from exact_models import FAMILIES, Family, family_named
from mixtures import GaussianMixture, equal_mixture, single_gaussian
from train_digits import DENOISER_FILE, JUDGE_FILE, DigitDenoiser, DigitJudge, latents_to_images, load_module

MIXTURE_SEED = 1234
COMPONENT_STD = 0.5
SMALL_SHAPE = (4, 8, 8)
WIDE_SHAPE = (16, 8, 8)
UNEQUAL_WEIGHTS = tuple(0.7**k for k in range(8))
DIGITS_SHAPE = (4, 4, 4)
BATCH_SIZE = 8
DIGITS_BATCH_SIZE = 10
BATCH_SIZES = (4, 8, 16)
SWEEP_FAMILIES = ("EPS karras", "v zsnr karras", "SD3 flow")
SWEEP_SAMPLERS = ("euler", "dpmpp_2m")
SWEEP_STRENGTHS = (0.25, 0.5, 1.0, 2.0)
SWEEP_OBJECTIVES = ("log_vendi", "kernel_sum")
NODE_DEFAULTS = Method("node defaults", "-", node_repulsion)
TARGETS = {"variance_ratio": 1.10, "modes_gmm8": 6.5, "likelihood_change_pct": -5.0, "digits_classes": 8.0,
           "digits_confidence_change_pct": -3.0}


@dataclass(frozen=True)
class Dataset:
    """Data with a known denoiser and how one batch of it is scored.

    score: figures {name: float} of samples [N, *shape] in the denoiser's own space.
    """

    name: str
    denoiser: Callable[[Tensor, Tensor], Tensor]
    shape: tuple[int, int, int]
    batch_size: int
    score: Callable[[Tensor], dict]


def gaussian_dataset(name: str, gaussian: GaussianMixture) -> Dataset:
    return Dataset(name, gaussian.denoise, tuple(gaussian.means.shape[1:]), BATCH_SIZE,
                   lambda samples: {"variance": samples.double().var(dim=0).mean().item()})


def mixture_dataset(name: str, mixture: GaussianMixture) -> Dataset:
    return Dataset(name, mixture.denoise, tuple(mixture.means.shape[1:]), BATCH_SIZE,
                   lambda samples: {"modes": float(mixture.modes(samples).unique().numel()),
                                    "log_likelihood": mixture.log_likelihood(samples).mean().item()})


def digits_dataset() -> Dataset:
    denoiser, judge = load_module(DigitDenoiser(), DENOISER_FILE), load_module(DigitJudge(), JUDGE_FILE)

    def score(samples: Tensor) -> dict:
        probabilities = torch.softmax(judge(latents_to_images(samples)), dim=1)
        return {"classes": float(probabilities.argmax(dim=1).unique().numel()),
                "confidence": probabilities.max(dim=1).values.mean().item()}

    return Dataset("digits", denoiser, DIGITS_SHAPE, DIGITS_BATCH_SIZE, score)


def datasets() -> list[Dataset]:
    return [
        gaussian_dataset("gaussian, zero mean", single_gaussian(SMALL_SHAPE, COMPONENT_STD, seed=None)),
        gaussian_dataset("gaussian, pattern mean", single_gaussian(SMALL_SHAPE, COMPONENT_STD, seed=MIXTURE_SEED)),
        mixture_dataset("8 equal modes", equal_mixture(8, SMALL_SHAPE, COMPONENT_STD, MIXTURE_SEED)),
        mixture_dataset("8 unequal modes, 16 ch", GaussianMixture(UNEQUAL_WEIGHTS, WIDE_SHAPE, COMPONENT_STD,
                                                                  MIXTURE_SEED + 1)),
        digits_dataset(),
    ]


@lru_cache(maxsize=None)
def model_for(dataset: Dataset, family: Family):
    """The family's MODEL around the dataset's denoiser, and its schedule (built once per pair)."""
    model = family.model(dataset.denoiser)
    return model, family.sigmas(model)


def measure(dataset: Dataset, family: Family, sampler_name: str, method: Method, seeds: int,
            batch_size: int | None = None) -> dict:
    """Mean figures over seeds 0 .. seeds-1 (the same seeds for every method)."""
    model, sigmas = model_for(dataset, family)
    size = batch_size or dataset.batch_size
    started = time.perf_counter()
    with torch.no_grad():
        batches = [dataset.score(sample_batch(model, sampler_name, sigmas, (size, *dataset.shape), seed,
                                              method.make()))
                   for seed in range(seeds)]
    figures = {key: statistics.fmean(batch[key] for batch in batches) for key in batches[0]}
    return {"data": dataset.name, "family": family.name, "sampler": sampler_name, "method": method.family,
            "setting": method.setting, "n": size, **figures,
            "ms_per_batch": 1e3 * (time.perf_counter() - started) / seeds}


def with_changes(rows: list[dict]) -> list[dict]:
    """Each row with its change against the i.i.d. row of the same data, family, sampler and N:
    `variance_ratio`, `log_likelihood_change_pct`, `confidence_change_pct`, `gain` (modes or classes)."""
    key = lambda row: (row["data"], row["family"], row["sampler"], row["n"])  # noqa: E731
    iid = {key(row): row for row in rows if row["method"] == IID.family}
    for row in rows:
        reference = iid[key(row)]
        if "variance" in row:
            row["variance_ratio"] = row["variance"] / reference["variance"]
        for figure in ("log_likelihood", "confidence"):
            if figure in row:
                row[f"{figure}_change_pct"] = 100 * (row[figure] - reference[figure]) / abs(reference[figure])
        for figure in ("modes", "classes"):
            if figure in row:
                row["gain"] = row[figure] - reference[figure]
    return rows


def averaged_over_samplers(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["data"], row["family"], row["method"], row["setting"], row["n"]), []).append(row)
    numeric = lambda members: {name for name, value in members[0].items() if isinstance(value, float)}  # noqa: E731
    return [{"data": data, "family": family, "sampler": "mean", "method": method, "setting": setting, "n": n,
             **{name: statistics.fmean(member[name] for member in members) for name in numeric(members)}}
            for (data, family, method, setting, n), members in groups.items()]


def matrix(all_data: list[Dataset], seeds: int) -> list[dict]:
    """i.i.d. and node defaults, every data set x family x sampler, at the data set's batch size."""
    return [measure(dataset, family, sampler_name, method, seeds)
            for family in FAMILIES for sampler_name in family.samplers for dataset in all_data
            for method in (IID, NODE_DEFAULTS)]


def batch_size_rows(mixture: Dataset, seeds: int) -> list[dict]:
    return [measure(mixture, family, "euler", method, seeds, batch_size)
            for family in FAMILIES for batch_size in BATCH_SIZES for method in (IID, NODE_DEFAULTS)]


def sweep_methods() -> list[Method]:
    return [IID] + [Method(objective, f"{strength:g}",
                           lambda objective=objective, strength=strength: node_repulsion(strength=strength,
                                                                                         objective=objective))
                    for objective in SWEEP_OBJECTIVES for strength in SWEEP_STRENGTHS]


def sweep_rows(all_data: list[Dataset], seeds: int) -> list[dict]:
    return [measure(dataset, family_named(name), sampler_name, method, seeds)
            for name in SWEEP_FAMILIES for sampler_name in SWEEP_SAMPLERS for dataset in all_data
            for method in sweep_methods()]


def by_cell(rows: list[dict], method: str, setting: str = "-") -> dict[tuple[str, str], dict]:
    """{(family, data): row} of the rows of one method and setting."""
    return {(row["family"], row["data"]): row for row in rows if row["method"] == method and row["setting"] == setting}


def summary_table(averaged: list[dict], method: str = NODE_DEFAULTS.family, setting: str = "-",
                  families: tuple[str, ...] | None = None) -> str:
    """One row per family: what `method` does to every data set (sampler means)."""
    cells, iid = by_cell(averaged, method, setting), by_cell(averaged, IID.family)
    header = ["family", "variance x (zero mean)", "variance x (pattern mean)", "modes of 8 (equal)",
              "Δ log-lik % (equal)", "modes of 8 (unequal, 16 ch)", "Δ log-lik % (unequal)", "digit classes",
              "Δ confidence %"]
    lines = []
    for family in families or tuple(family.name for family in FAMILIES):
        cell = lambda data: cells[(family, data)]  # noqa: E731
        lines.append([
            family, f"{cell('gaussian, zero mean')['variance_ratio']:.3f}",
            f"{cell('gaussian, pattern mean')['variance_ratio']:.3f}",
            f"{iid[(family, '8 equal modes')]['modes']:.2f} → {cell('8 equal modes')['modes']:.2f}",
            f"{cell('8 equal modes')['log_likelihood_change_pct']:+.1f}",
            f"{iid[(family, '8 unequal modes, 16 ch')]['modes']:.2f} → {cell('8 unequal modes, 16 ch')['modes']:.2f}",
            f"{cell('8 unequal modes, 16 ch')['log_likelihood_change_pct']:+.1f}",
            f"{iid[(family, 'digits')]['classes']:.2f} → {cell('digits')['classes']:.2f}",
            f"{cell('digits')['confidence_change_pct']:+.1f}"])
    return markdown_table(header, lines)


def per_sampler_table(rows: list[dict]) -> str:
    lines = [[row["family"], row["sampler"], row["data"], row["method"], row["setting"], row["n"],
              *(f"{row[name]:.3f}" if name in row else "" for name in
                ("variance_ratio", "modes", "log_likelihood_change_pct", "classes", "confidence_change_pct")),
              f"{row['ms_per_batch']:.0f}"] for row in rows]
    return markdown_table(["family", "sampler", "data", "method", "setting", "N", "variance x", "modes",
                           "Δ log-lik %", "classes", "Δ conf %", "ms/batch"], lines)


def batch_size_table(rows: list[dict]) -> str:
    cells = {(row["family"], row["n"], row["method"]): row["modes"] for row in rows}
    lines = [[family.name, *(f"{cells[(family.name, size, IID.family)]:.2f} → "
                             f"{cells[(family.name, size, NODE_DEFAULTS.family)]:.2f}" for size in BATCH_SIZES)]
             for family in FAMILIES]
    return markdown_table(["family (euler, 8 equal modes)", *(f"N = {size}" for size in BATCH_SIZES)], lines)


def target_check(averaged: list[dict]) -> dict:
    """Per family, whether the node defaults meet each target of issue 11 (sampler means)."""
    cells = by_cell(averaged, NODE_DEFAULTS.family)
    verdict = {}
    for family in FAMILIES:
        cell = lambda data: cells[(family.name, data)]  # noqa: E731
        verdict[family.name] = {
            "variance_within_10pct": all(abs(cell(data)["variance_ratio"] - 1) <= TARGETS["variance_ratio"] - 1
                                         for data in ("gaussian, zero mean", "gaussian, pattern mean")),
            "gmm8_modes": cell("8 equal modes")["modes"] >= TARGETS["modes_gmm8"],
            "gmm8_likelihood": cell("8 equal modes")["log_likelihood_change_pct"] >= TARGETS["likelihood_change_pct"],
            "digits_classes": cell("digits")["classes"] >= TARGETS["digits_classes"],
            "digits_confidence": cell("digits")["confidence_change_pct"] >= TARGETS["digits_confidence_change_pct"],
        }
    return verdict


def pareto_panels(sweep_averaged: list[dict]) -> list[Panel]:
    """Per sweep family: modes of the equal mixture against its likelihood change, one line per objective."""
    panels = []
    for family in SWEEP_FAMILIES:
        series: dict[str, list[tuple[float, float]]] = {}
        for row in sweep_averaged:
            if row["family"] == family and row["data"] == "8 equal modes":
                series.setdefault(row["method"], []).append((row["log_likelihood_change_pct"], row["modes"]))
        panels.append(Panel(f"{family}, N = {BATCH_SIZE} (mean of {len(SWEEP_SAMPLERS)} samplers)",
                            "log-likelihood change vs i.i.d. (%)", "modes covered of 8", series,
                            (("x", TARGETS["likelihood_change_pct"]), ("y", TARGETS["modes_gmm8"]))))
    return panels


def main() -> None:
    arguments = parse_arguments(__doc__.split("\n", 1)[0], default_seeds=16)
    started = time.perf_counter()
    all_data = datasets()
    rows = with_changes(matrix(all_data, arguments.seeds))
    averaged = averaged_over_samplers(rows)
    sizes = with_changes(batch_size_rows(all_data[2], arguments.seeds))
    sweep = with_changes(sweep_rows(all_data, arguments.seeds))
    sweep_averaged = averaged_over_samplers(sweep)
    verdict = target_check(averaged)
    tables = {
        "Node defaults against i.i.d. (mean over each family's samplers)": summary_table(averaged),
        "Batch size (node defaults, euler, 8 equal modes: i.i.d. → repelled)": batch_size_table(sizes),
        **{f"Strength sweep, {objective} at {strength:g}": summary_table(sweep_averaged, objective, f"{strength:g}",
                                                                         SWEEP_FAMILIES)
           for objective in SWEEP_OBJECTIVES for strength in SWEEP_STRENGTHS},
        "Per sampler": per_sampler_table(rows),
    }
    seconds = time.perf_counter() - started
    for title, table in list(tables.items())[:2]:
        print(f"\n## {title}\n\n{table}")
    print(json.dumps(verdict, indent=2))
    print(f"total {seconds:.0f} s")
    write_results("defaults", {"threads": arguments.threads, "seeds": arguments.seeds, "seconds": seconds,
                               "targets": TARGETS, "verdict": verdict, "averaged": averaged, "rows": rows,
                               "batch_sizes": sizes, "sweep": sweep_averaged}, tables, pareto_panels(sweep_averaged))


if __name__ == "__main__":
    main()
