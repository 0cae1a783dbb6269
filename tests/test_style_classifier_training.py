"""Tests of the style classifier trainer on real data: scikit-learn's handwritten digits as latents."""
import time

import pytest
import torch
from sklearn.datasets import load_digits

from particle_repulsion.embedders import TrainingInterrupted, train_style_classifier
from particle_repulsion.embedders.style_training import _grouped_split

DIGIT_NAMES = [str(digit) for digit in range(10)]
# Small noise range: the digits are standardised to unit variance, so sigma = 1 is already very noisy.
TRAINING_OPTIONS = dict(sigma_min=0.02, sigma_max=1.0, batch_size=64, validation_fraction=0.2)


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny convolutions run far faster on one thread when other work shares the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def digit_latents():
    """The 1,797 8x8 digits as standardised 4-channel 8x8 "latents" (each channel a different mix)."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)
    images = (images - images.mean()) / images.std()
    channel_mixes = torch.tensor([1.0, -1.0, 0.5, 2.0])
    latents = images[:, None] * channel_mixes[None, :, None, None]
    return latents, torch.tensor(digits.target)


def small_digit_set(per_class=12):
    latents, labels = digit_latents()
    chosen = torch.cat([torch.nonzero(labels == digit).flatten()[:per_class] for digit in range(10)])
    return latents[chosen], labels[chosen]


def test_digits_reach_ninety_percent_validation_accuracy_quickly():
    latents, labels = digit_latents()
    reported = []
    started = time.monotonic()
    model, history = train_style_classifier(
        latents, labels, DIGIT_NAMES, epochs=20, seed=0, **TRAINING_OPTIONS,
        on_epoch=lambda *figures: reported.append(figures),
    )
    elapsed = time.monotonic() - started
    assert elapsed < 90
    assert [report.epoch for report in history] == list(range(1, 21))
    assert reported == [(r.epoch, r.train_accuracy, r.validation_accuracy, r.loss) for r in history]
    final = history[-1]
    assert final.validation_accuracy >= 0.9
    assert final.clean_validation_accuracy >= 0.9
    assert final.loss < history[0].loss
    assert not model.training and not any(parameter.requires_grad for parameter in model.parameters())


def test_the_epoch_with_the_best_validation_score_is_kept():
    latents, labels = small_digit_set(per_class=30)
    model, history = train_style_classifier(latents, labels, DIGIT_NAMES, epochs=12, seed=1, **TRAINING_OPTIONS)
    scores = [((report.validation_accuracy + report.clean_validation_accuracy) / 2, -report.validation_loss)
              for report in history]
    best = history[scores.index(max(scores))]
    assert model.metadata["epochs"] == str(best.epoch)
    assert float(model.metadata["validation_accuracy"]) == pytest.approx(best.validation_accuracy, abs=1e-4)
    assert float(model.metadata["clean_validation_accuracy"]) == pytest.approx(best.clean_validation_accuracy,
                                                                               abs=1e-4)
    assert len(set(scores)) > 1, "the epochs should differ for this test to mean something"


def test_once_the_accuracies_saturate_the_epoch_with_the_lowest_validation_loss_is_kept():
    """Two well-separated digits are told apart perfectly within a few epochs; the later epochs still lower
    the validation loss (they learn the higher noise levels), and the kept epoch is the one where it is lowest."""
    latents, labels = digit_latents()
    chosen = (labels == 0) | (labels == 1)
    model, history = train_style_classifier(latents[chosen], labels[chosen], DIGIT_NAMES[:2], epochs=15, seed=0,
                                            **TRAINING_OPTIONS)
    perfect = [report for report in history
               if report.validation_accuracy == 1.0 and report.clean_validation_accuracy == 1.0]
    assert len(perfect) >= 3, "the accuracies should saturate for this test to mean something"
    kept = min(perfect, key=lambda report: report.validation_loss)
    assert kept.epoch != perfect[0].epoch
    assert model.metadata["epochs"] == str(kept.epoch)


def test_groups_are_never_split_between_training_and_validation():
    # Each digit image appears three times (like three points of one trajectory), each copy tagged with
    # its group in channel 0: no group may have copies on both sides.
    latents, labels = small_digit_set(per_class=8)
    groups = torch.arange(labels.numel()).repeat(3)
    copies = latents.repeat(3, 1, 1, 1)
    copies[:, 0, 0, 0] = groups.float()
    training, validation = _grouped_split(copies, labels.repeat(3), groups, 0.25, torch.Generator().manual_seed(0))
    training_groups = set(training.latents[:, 0, 0, 0].long().tolist())
    validation_groups = set(validation.latents[:, 0, 0, 0].long().tolist())
    assert not training_groups & validation_groups
    assert len(validation_groups) == 10 * 2 and validation.labels.numel() == 3 * len(validation_groups)
    assert validation.labels.unique().numel() == 10


def test_a_style_with_a_single_group_is_refused():
    latents, labels = small_digit_set(per_class=4)
    groups = labels.clone()  # every style is one trajectory
    with pytest.raises(ValueError, match="1 independent example"):
        train_style_classifier(latents, labels, DIGIT_NAMES, epochs=1, seed=0, groups=groups, **TRAINING_OPTIONS)


def test_should_stop_aborts_between_batches():
    latents, labels = small_digit_set()
    polls = []

    def stop_at_third_batch():
        polls.append(len(polls))
        return len(polls) == 3

    with pytest.raises(TrainingInterrupted, match="stopped during epoch 1"):
        train_style_classifier(latents, labels, DIGIT_NAMES, epochs=5, seed=0, should_stop=stop_at_third_batch,
                               **{**TRAINING_OPTIONS, "batch_size": 16})
    assert len(polls) == 3


def train_small(seed, epochs=2):
    latents, labels = small_digit_set()
    return train_style_classifier(latents, labels, DIGIT_NAMES, epochs=epochs, seed=seed, **TRAINING_OPTIONS)


def test_training_is_deterministic_for_a_seed():
    (first, first_history), (again, again_history) = train_small(seed=3), train_small(seed=3)
    other, _ = train_small(seed=4)
    assert first_history == again_history
    first_state, again_state, other_state = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(first_state[key], again_state[key]) for key in first_state)
    assert not torch.equal(first_state["classifier.weight"], other_state["classifier.weight"])


def test_training_inside_inference_mode_gives_a_model_that_backpropagates():
    latents, labels = small_digit_set()
    with torch.inference_mode():
        model, _ = train_style_classifier(latents.clone(), labels.clone(), DIGIT_NAMES, epochs=1, seed=0,
                                          **TRAINING_OPTIONS)
    probe = latents[:4].clone().requires_grad_(True)
    model(probe, torch.full((4,), 0.5)).square().sum().backward()
    assert probe.grad.abs().sum() > 0


def test_training_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_small(seed=0, epochs=1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("change, message", [
    (lambda latents, labels: (latents, torch.where(labels == 0, 10, labels)), "class indices from 0 to 9"),
    (lambda latents, labels: (latents, labels[:-1]), "one label per latent"),
    (lambda latents, labels: (latents[:, 0], labels), r"\[count, channels, height, width\]"),
    (lambda latents, labels: (latents.index_fill(0, torch.tensor([0]), float("nan")), labels), "NaN"),
    (lambda latents, labels: (latents[labels != 9], labels[labels != 9]), "'9' has 0 independent example"),
])
def test_unusable_training_data_is_refused(change, message):
    latents, labels = change(*small_digit_set())
    with pytest.raises(ValueError, match=message):
        train_style_classifier(latents, labels, DIGIT_NAMES, epochs=1, seed=0, **TRAINING_OPTIONS)


@pytest.mark.parametrize("options, message", [
    ({"validation_fraction": 1.0}, "validation fraction"),
    ({"batch_size": 0}, "batch size"),
    ({"epochs": 0}, "number of epochs"),
    ({"sigma_min": 0.0}, "sigma_min"),
])
def test_impossible_training_options_are_refused(options, message):
    latents, labels = small_digit_set()
    arguments = {**TRAINING_OPTIONS, "epochs": 1, **options}
    with pytest.raises(ValueError, match=message):
        train_style_classifier(latents, labels, DIGIT_NAMES, seed=0, **arguments)
