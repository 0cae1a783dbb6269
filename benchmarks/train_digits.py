"""Train the three small models of the digits benchmark on scikit-learn's 8x8 handwritten digits.

- a denoiser D(x, sigma) (an MLP with EDM preconditioning) that generates digit "latents";
- an independent latent classifier (an MLP on clean latents), a stronger classifier for the repulsion;
- a separate judge, a small CNN trained on clean digit images only, whose class and confidence score the
  generated samples (no embedder grades its own work).

A digit latent is the standardised 8x8 image, pixel-unshuffled to [4, 4, 4]: a bijective, SD1.5-shaped
(4-channel) latent that ComfyUI's samplers take as they are. Everything is seeded; run on the CPU:

    .host/venv/bin/python benchmarks/train_digits.py [--threads 1]

Writes benchmarks/weights/digits_{denoiser,judge,latent_classifier}.safetensors (committed, 4.3 MB in
all) and benchmarks/results/train_digits.json (figures and times). The pack's own style classifier is not
stored: bench_diversity_digits.py trains it with Train Style Embedder's own function, as a user would.
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "benchmarks" / "weights"
RESULTS = REPO / "benchmarks" / "results"
DENOISER_FILE = WEIGHTS / "digits_denoiser.safetensors"
JUDGE_FILE = WEIGHTS / "digits_judge.safetensors"
LATENT_CLASSIFIER_FILE = WEIGHTS / "digits_latent_classifier.safetensors"

SEED = 0
DIGIT_NAMES = [str(digit) for digit in range(10)]
IMAGE_SIDE = 8
UNSHUFFLE = 2  # 8x8x1 pixels <-> 4x4x4 latent
SIGMA_DATA = 1.0  # the latents are standardised to unit variance

DENOISER_WIDTH = 512
DENOISER_DEPTH = 4
NOISE_FREQUENCIES = 16
DENOISER_STEPS = 10_000
DENOISER_BATCH = 256
DENOISER_LEARNING_RATE = 1e-3
EMA_DECAY = 0.999
# log(sigma) ~ Normal(mean, std) for training the denoiser, as in EDM, centred for unit-variance data.
LOG_SIGMA_MEAN, LOG_SIGMA_STD = -0.5, 1.5

CLASSIFIER_EPOCHS = 40
CLASSIFIER_BATCH = 64
CLASSIFIER_TEST_FRACTION = 0.2
LATENT_CLASSIFIER_SEED = 1  # not the judge's seed: its own initial weights, batches and test split


@dataclass(frozen=True)
class DigitData:
    """The 1,797 digits: latents [M, 4, 4, 4] (standardised), images [M, 8, 8] in 0..16, labels [M]."""

    latents: Tensor
    images: Tensor
    labels: Tensor


@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as float64 images [M, 8, 8] (0..16) and int64 labels [M]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.tensor(digits.images, dtype=torch.float64), torch.tensor(digits.target, dtype=torch.long)


def load_digit_data() -> DigitData:
    images, labels = _sklearn_digits()
    images = images.float()
    return DigitData(images_to_latents(images), images, labels)


def _pixel_statistics() -> tuple[float, float]:
    """Mean and standard deviation of all digit pixels (0..16 scale): the standardisation constants."""
    pixels, _ = _sklearn_digits()
    return pixels.mean().item(), pixels.std().item()


PIXEL_MEAN, PIXEL_STD = _pixel_statistics()


def images_to_latents(images: Tensor) -> Tensor:
    """Images [M, 8, 8] (0..16) -> standardised latents [M, 4, 4, 4]."""
    standardised = (images - PIXEL_MEAN) / PIXEL_STD
    return F.pixel_unshuffle(standardised[:, None], UNSHUFFLE)


def latents_to_images(latents: Tensor) -> Tensor:
    """Latents [M, 4, 4, 4] -> images [M, 8, 8] on the 0..16 pixel scale (not clipped)."""
    return F.pixel_shuffle(latents, UNSHUFFLE)[:, 0] * PIXEL_STD + PIXEL_MEAN


class DigitDenoiser(nn.Module):
    """D(x, sigma): the denoised digit latent [N, 4, 4, 4] from a noisy one at noise level sigma [N].

    EDM preconditioning (Karras et al. 2022): D = c_skip x + c_out F(c_in x, log sigma), with F an MLP on
    the 64 latent values whose every hidden layer gets a learned shift from Fourier features of log sigma.
    """

    def __init__(self, width: int = DENOISER_WIDTH, depth: int = DENOISER_DEPTH) -> None:
        super().__init__()
        features = 4 * (IMAGE_SIDE // UNSHUFFLE) ** 2
        self.register_buffer("frequencies", torch.arange(1, NOISE_FREQUENCIES + 1, dtype=torch.float32))
        self.noise_embedding = nn.Sequential(nn.Linear(2 * NOISE_FREQUENCIES, width), nn.SiLU())
        self.hidden = nn.ModuleList(nn.Linear(features if layer == 0 else width, width) for layer in range(depth))
        self.noise_shifts = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.output = nn.Linear(width, features)

    def forward(self, noisy: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.reshape(-1, 1).to(noisy.dtype)
        total_std = (sigma**2 + SIGMA_DATA**2).sqrt()
        c_skip, c_out, c_in = SIGMA_DATA**2 / total_std**2, sigma * SIGMA_DATA / total_std, 1 / total_std
        flat = noisy.flatten(1)
        return (c_skip * flat + c_out * self.residual(c_in * flat, sigma)).view_as(noisy)

    def residual(self, scaled: Tensor, sigma: Tensor) -> Tensor:
        """F: the network's raw output [N, 64] for the scaled input [N, 64] at noise levels sigma [N, 1]."""
        phases = sigma.log() / 4 * self.frequencies
        embedding = self.noise_embedding(torch.cat([phases.sin(), phases.cos()], dim=1))
        hidden = scaled
        for layer, shift in zip(self.hidden, self.noise_shifts):
            hidden = F.silu(layer(hidden) + shift(embedding))
        return self.output(hidden)


class DigitLatentClassifier(nn.Module):
    """An independent digit classifier for the repulsion: logits [N, 10] of clean latents [N, 4, 4, 4].

    An MLP on the 64 latent values: another architecture, seed and split than the judge's, so that the
    repulsion does not steer by the judge's own weights. `sigma` is accepted and ignored (it reads D).
    """

    def __init__(self) -> None:
        super().__init__()
        features = 4 * (IMAGE_SIDE // UNSHUFFLE) ** 2
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(features, 256), nn.ReLU(), nn.Dropout(0.2),
                                    nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10))

    def forward(self, latents: Tensor, sigma: Tensor | None = None) -> Tensor:
        return self.layers(latents)


class DigitJudge(nn.Module):
    """The scoring classifier: logits [N, 10] of images [N, 8, 8] (0..16 scale), temperature-calibrated."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.3), nn.Linear(64 * 4, 10))
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, images: Tensor) -> Tensor:
        standardised = (images - PIXEL_MEAN) / PIXEL_STD
        return self.classifier(self.features(standardised[:, None])) / self.temperature


def edm_loss(denoiser: DigitDenoiser, clean: Tensor, generator: torch.Generator) -> Tensor:
    """EDM's weighted denoising loss on a batch of clean latents, with log-normal noise levels."""
    sigma = (LOG_SIGMA_MEAN + LOG_SIGMA_STD * torch.randn(clean.shape[0], generator=generator)).exp()
    noisy = clean + sigma[:, None, None, None] * torch.randn(clean.shape, generator=generator)
    weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    squared_error = (denoiser(noisy, sigma) - clean).pow(2).flatten(1).mean(dim=1)
    return (weight * squared_error).mean()


def train_denoiser(latents: Tensor, steps: int, seed: int) -> tuple[DigitDenoiser, list[float]]:
    """The EMA weights of a denoiser trained for `steps` Adam steps (cosine learning rate), and its losses."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    denoiser, averaged = DigitDenoiser(), DigitDenoiser()
    averaged.load_state_dict(denoiser.state_dict())
    optimiser = torch.optim.Adam(denoiser.parameters(), lr=DENOISER_LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    losses = []
    for step in range(1, steps + 1):
        batch = latents[torch.randint(latents.shape[0], (DENOISER_BATCH,), generator=generator)]
        loss = edm_loss(denoiser, batch, generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        _update_average(averaged, denoiser, EMA_DECAY)
        losses.append(loss.item())
        if step % 1000 == 0:
            print(f"[denoiser] step {step}/{steps}  loss {sum(losses[-1000:]) / 1000:.4f}", flush=True)
    return averaged.eval().requires_grad_(False), losses


@torch.no_grad()
def _update_average(averaged: nn.Module, model: nn.Module, decay: float) -> None:
    for average, current in zip(averaged.parameters(), model.parameters()):
        average.lerp_(current, 1 - decay)


def split_indices(labels: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Training and test indices, holding out `test_fraction` of every class."""
    generator = torch.Generator().manual_seed(seed)
    training, test = [], []
    for label in range(10):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        held_out = round(test_fraction * members.numel())
        test.append(members[:held_out])
        training.append(members[held_out:])
    return torch.cat(training), torch.cat(test)


def fit_classifier(name: str, build: Callable[[], nn.Module], inputs: Tensor, labels: Tensor, seed: int
                   ) -> tuple[nn.Module, Tensor]:
    """A classifier from `build()` trained with Adam on a per-class split of `inputs` [M, ...] (seeded by
    `seed`), frozen in eval mode, and the held-out test indices."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    training, test = split_indices(labels, CLASSIFIER_TEST_FRACTION, seed)
    model = build()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for epoch in range(1, CLASSIFIER_EPOCHS + 1):
        model.train()
        order = training[torch.randperm(training.numel(), generator=generator)]
        for start in range(0, order.numel(), CLASSIFIER_BATCH):
            members = order[start:start + CLASSIFIER_BATCH]
            loss = F.cross_entropy(model(inputs[members]), labels[members])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if epoch % 10 == 0:
            print(f"[{name}] epoch {epoch}/{CLASSIFIER_EPOCHS}  test accuracy "
                  f"{accuracy(model, inputs[test], labels[test]):.4f}", flush=True)
    return model.eval().requires_grad_(False), test


def train_judge(data: DigitData, seed: int) -> tuple[DigitJudge, dict]:
    """The judge trained on clean training digits, its temperature fitted on the held-out test digits."""
    judge, test = fit_classifier("judge", DigitJudge, data.images, data.labels, seed)
    judge.temperature.fill_(_calibrated_temperature(judge, data.images[test], data.labels[test]))
    return judge, {"test_accuracy": accuracy(judge, data.images[test], data.labels[test]),
                   "temperature": judge.temperature.item(), "test_digits": test.numel()}


def train_latent_classifier(data: DigitData, seed: int) -> tuple[DigitLatentClassifier, dict]:
    """The independent MLP classifier on clean latents, on its own split (another seed than the judge's)."""
    classifier, test = fit_classifier("latent classifier", DigitLatentClassifier, data.latents, data.labels, seed)
    return classifier, {"test_accuracy": accuracy(classifier, data.latents[test], data.labels[test]),
                        "test_digits": test.numel()}


@torch.no_grad()
def accuracy(classifier: nn.Module, inputs: Tensor, labels: Tensor) -> float:
    """Fraction of `inputs` classified as `labels`, in eval mode (the mode is restored afterwards)."""
    was_training = classifier.training
    classifier.eval()
    correct = (classifier(inputs).argmax(dim=1) == labels).float().mean().item()
    classifier.train(was_training)
    return correct


def _calibrated_temperature(judge: DigitJudge, images: Tensor, labels: Tensor) -> float:
    """The temperature (searched on a log grid) that minimises the held-out negative log-likelihood.

    Calibration makes "confidence" mean the judge's probability of being right, so a drop in it is a drop
    in recognisability, not an artefact of an over-confident network.
    """
    with torch.no_grad():
        logits = judge(images) * judge.temperature
    candidates = torch.logspace(-1, 1, 81)
    losses = torch.stack([F.cross_entropy(logits / temperature, labels) for temperature in candidates])
    return candidates[losses.argmin()].item()


def save_module(module: nn.Module, path: Path, metadata: dict, dtype: torch.dtype = torch.float32) -> None:
    """`module`'s weights as `dtype` in a .safetensors file with string `metadata`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().to(dtype).contiguous() for name, tensor in module.state_dict().items()}
    save_file(tensors, str(path), metadata={key: str(value) for key, value in metadata.items()})


def load_module(module: nn.Module, path: Path) -> nn.Module:
    """`module` with the weights of `path` (written by this script; cast to the module's float32), frozen and
    in eval mode."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `.host/venv/bin/python benchmarks/train_digits.py` first.")
    module.load_state_dict(load_file(str(path)))
    return module.eval().requires_grad_(False)


def timed(what: str, run):
    started = time.perf_counter()
    outcome = run()
    seconds = time.perf_counter() - started
    print(f"[{what}] {seconds:.1f} s", flush=True)
    return outcome, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s)")
    parser.add_argument("--denoiser-steps", type=int, default=DENOISER_STEPS)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    data = load_digit_data()
    (judge, judge_figures), judge_seconds = timed("judge", lambda: train_judge(data, SEED))
    (latent_classifier, latent_classifier_figures), latent_classifier_seconds = timed(
        "latent classifier", lambda: train_latent_classifier(data, LATENT_CLASSIFIER_SEED))
    (denoiser, losses), denoiser_seconds = timed(
        "denoiser", lambda: train_denoiser(data.latents, arguments.denoiser_steps, SEED))
    save_module(judge, JUDGE_FILE, {"seed": SEED, **judge_figures})
    save_module(latent_classifier, LATENT_CLASSIFIER_FILE,
                {"seed": LATENT_CLASSIFIER_SEED, **latent_classifier_figures})
    # float16 halves the denoiser's file (7.7 -> 3.8 MB) so that all of them fit the 5 MB to be committed.
    save_module(denoiser, DENOISER_FILE, {"seed": SEED, "steps": arguments.denoiser_steps,
                                          "final_loss": sum(losses[-1000:]) / min(1000, len(losses))}, torch.float16)
    summary = {
        "torch": torch.__version__, "threads": arguments.threads, "seed": SEED,
        "judge": judge_figures, "latent_classifier": latent_classifier_figures,
        "denoiser": {"steps": arguments.denoiser_steps, "final_loss": sum(losses[-1000:]) / min(1000, len(losses)),
                     "parameters": sum(parameter.numel() for parameter in denoiser.parameters())},
        "seconds": {"judge": judge_seconds, "latent_classifier": latent_classifier_seconds,
                    "denoiser": denoiser_seconds,
                    "total": judge_seconds + latent_classifier_seconds + denoiser_seconds},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_digits.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
