"""Training the style classifier on noisy latents, as in the thesis.

Every training example is `x0 + sigma * noise` with sigma log-uniform in `[sigma_min, sigma_max]`,
drawn afresh each epoch. The cross-entropy of each example is weighted by `1 / (1 + sigma^2)`, the
share of a unit-variance latent's variance that is still signal, so cleaner levels count more.

Validation uses a held-out, per-class stratified split, evaluated twice every epoch: on noisy
latents with sigma log-uniform in the lower half of the log range, `[sigma_min, sqrt(sigma_min *
sigma_max)]` (fixed noise, drawn once, so epochs are comparable), and on the clean latents. The split
holds out whole groups (e.g. all the points of one sampling trajectory, which look alike), so the
validation accuracy is not flattered by near-copies of training latents. The epoch with the best
validation score (the mean of the noisy and clean accuracies, ties going to the lower noisy validation
loss) is the one returned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import check_whole_number
from .style_classifier import StyleClassifier, check_class_names, check_sigma_range

LEARNING_RATE = 3e-3
EVALUATION_BATCH_SIZE = 256


class TrainingInterrupted(Exception):
    """Raised when `should_stop()` asks the trainer to stop; the partly trained model is discarded."""


@dataclass(frozen=True)
class EpochReport:
    """The figures of one training epoch; accuracies are fractions in [0, 1]."""

    epoch: int
    loss: float
    train_accuracy: float
    validation_accuracy: float
    clean_validation_accuracy: float
    validation_loss: float  # mean cross-entropy on the noisy validation set, weighted as in training


@dataclass(frozen=True)
class _LabelledLatents:
    latents: Tensor  # [M, C, H, W]
    labels: Tensor  # [M], int64
    sigma: Tensor | None = None  # [M] noise level of each latent, None for clean latents


def train_style_classifier(
    latents: Tensor, labels: Tensor, class_names: Sequence[str], *, sigma_min: float, sigma_max: float,
    epochs: int, batch_size: int, validation_fraction: float, seed: int,
    on_epoch: Callable[[int, float, float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None, groups: Tensor | None = None,
) -> tuple[StyleClassifier, list[EpochReport]]:
    """Train a `StyleClassifier` on labelled latents and return it (frozen, eval mode) with its history.

    Args:
        latents: `[M, C, H, W]` clean latents (as the VAE encodes them, model-scaled).
        labels: `[M]` integer class indices into `class_names`; every class needs 2+ examples.
        sigma_min, sigma_max: the training noise range.
        epochs, batch_size: optimisation length; Adam at `LEARNING_RATE`.
        validation_fraction: share of every class held out for validation, in (0, 1).
        seed: fixes the split, the initial weights, the batches and the noise.
        on_epoch: called after every epoch as `on_epoch(epoch, train_accuracy, validation_accuracy, loss)`
            (epoch counts from 1, accuracies are fractions, train accuracy is on the noisy batches).
        should_stop: polled before every batch; when it returns True, `TrainingInterrupted` is raised.
        groups: `[M]` integer group of every latent (e.g. its trajectory); a group is never split
            between training and validation. None: every latent is its own group.

    Safe to call from a ComfyUI node: it trains under `torch.inference_mode(False)` and
    `torch.enable_grad()` on a copy of the inputs. The best epoch's figures go into `model.metadata`.
    """
    with torch.inference_mode(False), torch.enable_grad():
        latents = latents.detach().clone().float()
        labels = labels.detach().clone().long()
        groups = torch.arange(labels.numel()) if groups is None else groups.detach().clone().long().cpu()
        check_class_names(class_names)
        check_sigma_range(sigma_min, sigma_max)
        _check_training_inputs(latents, labels, groups, class_names, epochs, batch_size, validation_fraction)
        model = _initial_model(latents, class_names, sigma_min, sigma_max, seed)
        generator = torch.Generator().manual_seed(seed)
        training, clean_validation = _grouped_split(latents, labels, groups, validation_fraction, generator)
        noisy_validation = _noisy_copy(clean_validation, sigma_min, math.sqrt(sigma_min * sigma_max), generator)
        optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        history, best = [], _BestEpoch()
        for epoch in range(1, epochs + 1):
            epoch_batches = _batches(training, batch_size, sigma_min, sigma_max, generator)
            loss, train_accuracy = _train_epoch(model, optimiser, epoch_batches, epoch, should_stop)
            noisy_accuracy, noisy_loss = _evaluate(model, noisy_validation)
            report = EpochReport(epoch, loss, train_accuracy, noisy_accuracy, _evaluate(model, clean_validation)[0],
                                 noisy_loss)
            history.append(report)
            best.consider(model, report)
            if on_epoch is not None:
                on_epoch(epoch, report.train_accuracy, report.validation_accuracy, report.loss)
        model.load_state_dict(best.state)
    _finalise(model, best.report)
    return model, history


class _BestEpoch:
    """The weights and figures of the epoch with the best validation score seen so far."""

    def __init__(self) -> None:
        self.report: EpochReport | None = None
        self.state: dict[str, Tensor] = {}

    def consider(self, model: StyleClassifier, report: EpochReport) -> None:
        if self.report is None or _validation_score(report) > _validation_score(self.report):
            self.report = report
            self.state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _validation_score(report: EpochReport) -> tuple[float, float]:
    """Mean of the noisy and clean validation accuracies (repulsion reads noisy latents or clean
    predictions), then the lower noisy validation loss: an easy style set reaches 100 % within a few epochs,
    and the epochs after it still learn the higher noise levels, where repulsion decides the styles."""
    return (report.validation_accuracy + report.clean_validation_accuracy) / 2, -report.validation_loss


def _check_training_inputs(latents: Tensor, labels: Tensor, groups: Tensor, class_names: Sequence[str],
                           epochs: int, batch_size: int, validation_fraction: float) -> None:
    if latents.dim() != 4:
        raise ValueError("Training latents must be shaped [count, channels, height, width], "
                         f"got {tuple(latents.shape)}.")
    if labels.shape != latents.shape[:1]:
        raise ValueError(f"Expected one label per latent ({latents.shape[0]}), "
                         f"got labels shaped {tuple(labels.shape)}.")
    if not torch.isfinite(latents).all():
        raise ValueError("The training latents contain NaN or infinite values.")
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"Labels must be class indices from 0 to {len(class_names) - 1}.")
    if groups.shape != labels.shape:
        raise ValueError(f"Expected one group per latent ({labels.numel()}), got groups shaped {tuple(groups.shape)}.")
    for label, name in enumerate(class_names):
        count = groups[labels.cpu() == label].unique().numel()
        if count < 2:
            raise ValueError(f"The style {name!r} has {count} independent example(s) (images or trajectories); "
                             "every style needs at least 2 (one to train on, one to validate).")
    check_whole_number("number of epochs", epochs, minimum=1)
    check_whole_number("batch size", batch_size, minimum=1)
    if not 0 < validation_fraction < 1:
        raise ValueError(f"The validation fraction must be between 0 and 1, got {validation_fraction}.")


def _grouped_split(latents: Tensor, labels: Tensor, groups: Tensor, validation_fraction: float,
                   generator: torch.Generator) -> tuple[_LabelledLatents, _LabelledLatents]:
    """Training and validation sets holding out `validation_fraction` of every class's groups (at least
    one group, never all): every latent of a group lands on the same side."""
    held_out_groups = []
    cpu_labels = labels.cpu()
    for label in cpu_labels.unique().tolist():
        class_groups = groups[cpu_labels == label].unique()
        class_groups = class_groups[torch.randperm(class_groups.numel(), generator=generator)]
        held_out = min(max(round(validation_fraction * class_groups.numel()), 1), class_groups.numel() - 1)
        held_out_groups.append(class_groups[:held_out])
    validation = torch.isin(groups, torch.cat(held_out_groups)).to(labels.device)
    return (_LabelledLatents(latents[~validation], labels[~validation]),
            _LabelledLatents(latents[validation], labels[validation]))


def _log_uniform(count: int, sigma_min: float, sigma_max: float, generator: torch.Generator) -> Tensor:
    """`[count]` noise levels log-uniform in `[sigma_min, sigma_max]`."""
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    return torch.exp(log_min + (log_max - log_min) * torch.rand(count, generator=generator))


def _noisy_copy(clean: _LabelledLatents, sigma_min: float, sigma_max: float,
                generator: torch.Generator) -> _LabelledLatents:
    """`clean` with Gaussian noise of log-uniform std in `[sigma_min, sigma_max]` added to each latent."""
    sigma = _log_uniform(clean.labels.numel(), sigma_min, sigma_max, generator).to(clean.latents)
    noise = torch.randn(clean.latents.shape, generator=generator).to(clean.latents)
    return _LabelledLatents(clean.latents + sigma[:, None, None, None] * noise, clean.labels, sigma)


def _batches(training: _LabelledLatents, batch_size: int, sigma_min: float, sigma_max: float,
             generator: torch.Generator) -> Iterator[_LabelledLatents]:
    """One epoch of shuffled training batches, noised one batch at a time."""
    order = torch.randperm(training.labels.numel(), generator=generator)
    for start in range(0, order.numel(), batch_size):
        members = order[start:start + batch_size]
        clean = _LabelledLatents(training.latents[members], training.labels[members])
        yield _noisy_copy(clean, sigma_min, sigma_max, generator)


def _initial_model(latents: Tensor, class_names: Sequence[str], sigma_min: float, sigma_max: float,
                   seed: int) -> StyleClassifier:
    """A freshly initialised classifier whose weights depend only on `seed` (global RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = StyleClassifier(latents.shape[1], class_names, sigma_min=sigma_min, sigma_max=sigma_max)
    return model.to(latents.device).train()


def _train_epoch(model: StyleClassifier, optimiser: torch.optim.Optimizer, batches: Iterable[_LabelledLatents],
                 epoch: int, should_stop: Callable[[], bool] | None) -> tuple[float, float]:
    """Run one epoch; returns the mean weighted loss and the accuracy on the noisy training batches."""
    total_loss, correct, seen = 0.0, 0, 0
    for batch in batches:
        if should_stop is not None and should_stop():
            raise TrainingInterrupted(f"Style classifier training was stopped during epoch {epoch}.")
        logits = model.classify(batch.latents, batch.sigma)
        weights = _noise_weights(batch.sigma, logits)
        loss = (weights * F.cross_entropy(logits, batch.labels, reduction="none")).sum() / weights.sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        total_loss += loss.item() * batch.labels.numel()
        correct += (logits.argmax(dim=1) == batch.labels).sum().item()
        seen += batch.labels.numel()
    return total_loss / seen, correct / seen


def _noise_weights(sigma: Tensor | None, logits: Tensor) -> Tensor:
    """`[B]` weight of each example's cross-entropy: `1 / (1 + sigma^2)`, the share of a unit-variance latent's
    variance that is still signal (1 for clean latents, `sigma` None)."""
    return torch.ones_like(logits[:, 0]) if sigma is None else 1 / (1 + sigma**2)


@torch.no_grad()
def _evaluate(model: StyleClassifier, dataset: _LabelledLatents) -> tuple[float, float]:
    """The fraction of `dataset` the model classifies correctly and its mean cross-entropy (weighted by
    `_noise_weights`, as in training), evaluated in chunks."""
    correct, weighted_loss, total_weight = 0, 0.0, 0.0
    for start in range(0, dataset.labels.numel(), EVALUATION_BATCH_SIZE):
        chunk = slice(start, start + EVALUATION_BATCH_SIZE)
        sigma = None if dataset.sigma is None else dataset.sigma[chunk]
        logits = model.classify(dataset.latents[chunk], sigma)
        correct += (logits.argmax(dim=1) == dataset.labels[chunk]).sum().item()
        weights = _noise_weights(sigma, logits)
        losses = F.cross_entropy(logits, dataset.labels[chunk], reduction="none")
        weighted_loss += (weights * losses).sum().item()
        total_weight += weights.sum().item()
    return correct / dataset.labels.numel(), weighted_loss / total_weight


def _finalise(model: StyleClassifier, best: EpochReport) -> None:
    """Freeze the model for use as an embedder and record its (best epoch's) figures in its metadata."""
    model.eval().requires_grad_(False)
    model.metadata.update({
        "epochs": str(best.epoch),
        "validation_accuracy": f"{best.validation_accuracy:.4f}",
        "clean_validation_accuracy": f"{best.clean_validation_accuracy:.4f}",
    })
