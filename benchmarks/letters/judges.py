"""The judges: a letter classifier and a font classifier on clean glyph images, never used for steering.

Both are the same small CNN (`GlyphJudge`) on ink images [M, 64, 64]. The font judge's penultimate
features (`GlyphJudge.features`) are the space in which the benchmark measures style diversity (Vendi).
`merge_confused_styles` turns the candidate fonts into styles: fonts that a first font judge confuses on
held-out renders are merged into one style, so that "distinct fonts in a batch" counts visibly different
fonts.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEATURES = 128
EPOCHS = 8
BATCH = 64
LEARNING_RATE = 2e-3


class GlyphJudge(nn.Module):
    """Logits [M, classes] of ink images [M, 64, 64]; `features` gives the 128-d penultimate layer."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 32, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(128, 128, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(128 * 16, FEATURES), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, classes)

    def features(self, ink: Tensor) -> Tensor:
        return self.trunk(ink[:, None])

    def forward(self, ink: Tensor) -> Tensor:
        return self.head(self.features(ink))


def train_judge(ink: Tensor, labels: Tensor, classes: int, seed: int, epochs: int = EPOCHS,
                log: Callable[[str], None] = print) -> GlyphJudge:
    """A `GlyphJudge` trained with Adam (cosine learning rate) on ink [M, 64, 64] and labels [M]; frozen."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    judge = GlyphJudge(classes)
    optimiser = torch.optim.Adam(judge.parameters(), lr=LEARNING_RATE)
    steps = epochs * ((labels.numel() + BATCH - 1) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, LEARNING_RATE, total_steps=steps)
    judge.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(labels.numel(), generator=generator)
        total = 0.0
        for start in range(0, order.numel(), BATCH):
            members = order[start:start + BATCH]
            loss = F.cross_entropy(judge(ink[members]), labels[members])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * members.numel()
        log(f"epoch {epoch}/{epochs}: loss {total / order.numel():.4f}")
    return judge.eval().requires_grad_(False)


@torch.no_grad()
def predict(judge: GlyphJudge, ink: Tensor, chunk: int = 512) -> Tensor:
    """Class indices [M] of ink [M, 64, 64]."""
    return torch.cat([judge(ink[start:start + chunk]).argmax(dim=1) for start in range(0, ink.shape[0], chunk)])


def accuracy(judge: GlyphJudge, ink: Tensor, labels: Tensor) -> float:
    return (predict(judge, ink) == labels).float().mean().item()


def confusion(judge: GlyphJudge, ink: Tensor, labels: Tensor, classes: int) -> Tensor:
    """Row-normalised confusion matrix [classes, classes]: entry (i, j) = P(predicted j | true i)."""
    counts = torch.zeros(classes, classes)
    counts.index_put_((labels, predict(judge, ink)), torch.ones(labels.numel()), accumulate=True)
    return counts / counts.sum(dim=1, keepdim=True).clamp_min(1)


def merge_confused_styles(confusion_matrix: Tensor, threshold: float) -> list[int]:
    """Style index of every candidate font: fonts i and j share a style when their mutual confusion
    (P(j | i) + P(i | j)) / 2 exceeds `threshold`, transitively. Styles are numbered in the order of
    their first font."""
    count = confusion_matrix.shape[0]
    parent = list(range(count))

    def root(index: int) -> int:
        while parent[index] != index:
            index = parent[index]
        return index

    mutual = (confusion_matrix + confusion_matrix.T) / 2
    for first in range(count):
        for second in range(first + 1, count):
            if mutual[first, second] > threshold:
                parent[max(root(first), root(second))] = min(root(first), root(second))
    roots = sorted({root(index) for index in range(count)})
    return [roots.index(root(index)) for index in range(count)]
