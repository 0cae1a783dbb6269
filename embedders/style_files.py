"""Style-embedder files: a `StyleClassifier`'s weights and description in one `.safetensors` file.

The safetensors string metadata holds:
    format                "particle_repulsion.style_embedder" (tells these files from checkpoints)
    architecture_version  "1" (see `style_classifier.ARCHITECTURE_VERSION`)
    class_names           JSON list of the style names, in label order
    latent_channels       e.g. "4"
    sigma_min, sigma_max  the training noise range, e.g. "0.03", "14.6"
    latent_format         the model family whose latents it reads, as named by the caller, e.g. "SD15"
and any other descriptive strings (validation_accuracy, epochs, ...). Nothing is pickled.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import safetensors
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .style_classifier import ARCHITECTURE_VERSION, StyleClassifier

FORMAT_MARKER = "particle_repulsion.style_embedder"
_STRUCTURAL_KEYS = ("format", "architecture_version", "class_names", "latent_channels", "sigma_min", "sigma_max")
_REQUIRED_DESCRIPTIVE_KEYS = ("latent_format",)


class StyleEmbedderError(ValueError):
    """A style-embedder file that cannot be used, with a message saying why."""


@dataclass(frozen=True)
class _StyleHeader:
    """What a style-embedder file's metadata says about the model inside it."""

    latent_channels: int
    class_names: tuple[str, ...]
    sigma_min: float
    sigma_max: float
    metadata: dict[str, str]  # the descriptive (non-structural) entries

    @property
    def latent_format(self) -> str:
        return self.metadata.get("latent_format", "unknown latent format")


def save_style_embedder(path: str | os.PathLike, model: StyleClassifier, metadata: Mapping[str, object]) -> None:
    """Write `model` to `path` (`.safetensors`), with `model.metadata` updated by `metadata`.

    `metadata` values are stored as strings; it (or the model's own metadata) must name the
    "latent_format" (e.g. "SD15", "SDXL", "Flux"). The file is written next to `path` and then moved
    into place, so an interrupted save never leaves a half-written style embedder behind.
    """
    tensors = {key: tensor.detach().to("cpu", torch.float32).contiguous() for key, tensor in model.state_dict().items()}
    partial_path = Path(f"{os.fspath(path)}.partial")
    try:
        save_file(tensors, str(partial_path), metadata=_file_metadata(model, metadata))
        os.replace(partial_path, path)
    finally:
        partial_path.unlink(missing_ok=True)


def _file_metadata(model: StyleClassifier, metadata: Mapping[str, object]) -> dict[str, str]:
    """The string metadata of `model`'s file: its structure plus its descriptive metadata updated by `metadata`."""
    descriptive = {**model.metadata, **{key: str(value) for key, value in metadata.items()}}
    reserved = sorted(set(descriptive) & set(_STRUCTURAL_KEYS))
    if reserved:
        raise ValueError(f"These metadata names are reserved by the file format: {', '.join(reserved)}.")
    missing = [key for key in _REQUIRED_DESCRIPTIVE_KEYS if not descriptive.get(key)]
    if missing:
        raise ValueError(f"Saving a style embedder needs the metadata: {', '.join(missing)} (e.g. 'SD15').")
    structural = {
        "format": FORMAT_MARKER,
        "architecture_version": str(ARCHITECTURE_VERSION),
        "class_names": json.dumps(list(model.class_names)),
        "latent_channels": str(model.latent_channels),
        "sigma_min": repr(model.sigma_min),
        "sigma_max": repr(model.sigma_max),
    }
    return {**descriptive, **structural}


def load_style_embedder(path: str | os.PathLike, expected_channels: int | None = None) -> StyleClassifier:
    """Load a style embedder written by `save_style_embedder`, frozen and in eval mode.

    `expected_channels` is the channel count of the latents it will read (the model's), checked
    against the file. Weights are built under `torch.inference_mode(False)`, so this is safe to call
    from a ComfyUI node. Raises `StyleEmbedderError` for a missing, corrupt or truncated file, a
    `.safetensors` that is not a style embedder, an unknown architecture version, missing or
    mis-shaped tensors, and a latent channel count other than `expected_channels`.
    """
    name = Path(path).name
    with _opened(path) as file:
        header = _read_header(file.metadata(), name)
        _check_channels(header, expected_channels, name)
        with torch.inference_mode(False):
            model = _model_for(header, name)
            state = {key: file.get_tensor(key) for key in file.keys()}
            _check_tensors(model, state, name)
            model.load_state_dict(state)
    return model.eval().requires_grad_(False)


@contextmanager
def _opened(path: str | os.PathLike) -> Iterator:
    """The open safetensors file, with read and format errors turned into `StyleEmbedderError`."""
    name = Path(path).name
    try:
        with safe_open(os.fspath(path), framework="pt") as file:
            yield file
    except FileNotFoundError as error:
        raise StyleEmbedderError(f"The style embedder file {name} does not exist.") from error
    except (safetensors.SafetensorError, OSError) as error:
        raise StyleEmbedderError(
            f"The style embedder file {name} cannot be read; it may be corrupt or only partly "
            f"downloaded or copied ({error})."
        ) from error


def _read_header(metadata: Mapping[str, str] | None, name: str) -> _StyleHeader:
    """The model description in a file's metadata, after checking that the file is a style embedder."""
    metadata = dict(metadata or {})
    if metadata.get("format") != FORMAT_MARKER:
        raise StyleEmbedderError(
            f"{name} is not a Particle Repulsion style embedder (it may be a model checkpoint or another "
            "kind of .safetensors file). Train one with the pack's style-embedder trainer."
        )
    version = metadata.get("architecture_version")
    if version != str(ARCHITECTURE_VERSION):
        raise StyleEmbedderError(
            f"{name} uses style-embedder architecture version {version}, which this version of the pack "
            f"does not know (it reads version {ARCHITECTURE_VERSION}); update the node pack or retrain."
        )
    try:
        return _StyleHeader(
            latent_channels=int(metadata["latent_channels"]),
            class_names=_string_list(metadata["class_names"]),
            sigma_min=float(metadata["sigma_min"]),
            sigma_max=float(metadata["sigma_max"]),
            metadata={key: value for key, value in metadata.items() if key not in _STRUCTURAL_KEYS},
        )
    except (KeyError, ValueError, TypeError) as error:
        raise StyleEmbedderError(f"The metadata of {name} is damaged or incomplete ({error!r}).") from error


def _string_list(text: str) -> tuple[str, ...]:
    """The JSON list of strings in `text`, or a ValueError."""
    values = json.loads(text)
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise ValueError(f"expected a JSON list of names, got {text!r}")
    return tuple(values)


def _check_channels(header: _StyleHeader, expected_channels: int | None, name: str) -> None:
    if expected_channels is not None and header.latent_channels != expected_channels:
        raise StyleEmbedderError(
            f"{name}: this style embedder was trained for {header.latent_channels}-channel latents "
            f"({header.latent_format}) but the model makes {expected_channels}-channel latents."
        )


def _model_for(header: _StyleHeader, name: str) -> StyleClassifier:
    """An untrained `StyleClassifier` with the shape the header describes."""
    try:
        return StyleClassifier(header.latent_channels, header.class_names, sigma_min=header.sigma_min,
                               sigma_max=header.sigma_max, metadata=header.metadata)
    except (ValueError, TypeError) as error:
        raise StyleEmbedderError(f"The metadata of {name} describes an impossible model: {error}") from error


def _check_tensors(model: StyleClassifier, state: Mapping[str, torch.Tensor], name: str) -> None:
    """Raise `StyleEmbedderError` unless `state` has exactly the tensors of `model`, in their shapes."""
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    problems = [f"missing {key}" for key in expected if key not in state]
    problems += [f"unexpected {key}" for key in state if key not in expected]
    problems += [
        f"{key} has shape {tuple(state[key].shape)} instead of {shape}"
        for key, shape in expected.items() if key in state and tuple(state[key].shape) != shape
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise StyleEmbedderError(f"The weights in {name} do not match its description: {shown}.")
