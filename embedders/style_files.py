"""Style-embedder files: a `StyleClassifier`'s weights and description in one `.safetensors` file.

The safetensors string metadata holds:
    format                "particle_repulsion.style_embedder" (tells these files from checkpoints)
    architecture_version  "2" (see `style_classifier.ARCHITECTURE_VERSION`; "1" files still load)
    class_names           JSON list of the style names, in label order
    latent_channels       e.g. "4"
    sigma_min, sigma_max  the training noise range, e.g. "0.03", "14.6"
    latent_format         the model family whose latents it reads, as named by the caller, e.g. "SD15"
and any other descriptive strings (validation_accuracy, epochs, ...). Nothing is pickled.

A file is untrusted input (it may come from anyone): the loader reads the header first and refuses,
before building anything, a file over `MAX_FILE_BYTES`, metadata out of bounds (`MAX_LATENT_CHANNELS`,
`MAX_CLASSES`, `MAX_CLASS_NAME_LENGTH`, `MAX_METADATA_TEXT_LENGTH`), tensors whose shapes or types
(read from the header, not loaded) differ from what the metadata describes, and weights that are NaN
or infinite.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import safetensors
import torch
from safetensors import safe_open
from safetensors.torch import save as serialise

from .style_classifier import (
    KNOWN_ARCHITECTURE_VERSIONS,
    StyleClassifier,
    check_class_names,
    check_sigma_range,
)

FORMAT_MARKER = "particle_repulsion.style_embedder"
_STRUCTURAL_KEYS = ("format", "architecture_version", "class_names", "latent_channels", "sigma_min", "sigma_max")
_REQUIRED_DESCRIPTIVE_KEYS = ("latent_format",)

# Bounds far above any real style embedder (a few MB at the most), far below what hurts a server.
MAX_FILE_BYTES = 16 * 2**20
MAX_LATENT_CHANNELS = 256  # latent formats have 4 to 128 channels
MAX_CLASSES = 4096
MAX_CLASS_NAME_LENGTH = 256  # characters
MAX_METADATA_TEXT_LENGTH = 4096  # characters of any other metadata value
FLOAT_DTYPES = ("F32", "F16", "BF16")
MAX_REASON_LENGTH = 300  # characters of a metadata problem quoted in a message
PARTIAL_SUFFIX = ".partial"
STALE_PARTIAL_SECONDS = 600  # a save takes well under a second; an older partial file is a killed save's


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
    architecture_version: int

    @property
    def latent_format(self) -> str:
        return self.metadata.get("latent_format", "unknown latent format")


def save_style_embedder(path: str | os.PathLike, model: StyleClassifier, metadata: Mapping[str, object], *,
                        overwrite: bool = True) -> None:
    """Write `model` to `path` (`.safetensors`), with `model.metadata` updated by `metadata`.

    `metadata` values are stored as strings; it (or the model's own metadata) must name the
    "latent_format" (e.g. "SD15", "SDXL", "Flux"). The whole file is written under a temporary name
    in the same folder and then moved into place, so nobody ever sees a half-written style embedder.
    With `overwrite` off the last step is a hard link, which fails atomically with FileExistsError when
    `path` exists by then, even if it was created while the model trained. Partial files that a killed
    save left in the folder are removed.
    """
    path = Path(path)
    tensors = {key: tensor.detach().to("cpu", torch.float32).contiguous() for key, tensor in model.state_dict().items()}
    contents = serialise(tensors, metadata=_file_metadata(model, metadata))
    try:
        remove_stale_partial_files(path.parent)
        partial_path = _written_partial_file(path, contents)
        try:
            _move_into_place(partial_path, path, overwrite)
        finally:
            partial_path.unlink(missing_ok=True)
    except FileExistsError:
        raise
    except OSError as error:  # its own text names the folder: keep only the reason
        raise OSError(f"Cannot write the style embedder {path.name} ({error.strerror or type(error).__name__}).") \
            from None


def _written_partial_file(path: Path, contents: bytes) -> Path:
    """A new hidden file next to `path`, holding `contents` on disk (flushed), named `.<name>.<random>.partial`."""
    descriptor, partial_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    partial_path = Path(partial_name)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(contents)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        partial_path.unlink(missing_ok=True)
        raise
    return partial_path


def _move_into_place(partial_path: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(partial_path, path)
        return
    try:
        os.link(partial_path, path)
    except FileExistsError:  # its own text names both paths
        raise existing_file_error(path.name) from None


def existing_file_error(name: str) -> FileExistsError:
    """The refusal to replace the style embedder `name` (a file name, never a path)."""
    return FileExistsError(f"{name} already exists; choose another file name, or turn on overwrite to replace it.")


def remove_stale_partial_files(folder: Path) -> None:
    """Delete the partial style-embedder files in `folder` older than `STALE_PARTIAL_SECONDS` (left by
    saves that were killed before their last step)."""
    oldest_allowed = time.time() - STALE_PARTIAL_SECONDS
    for candidate in folder.glob(f"*.safetensors*{PARTIAL_SUFFIX}"):
        try:
            if candidate.is_file() and candidate.lstat().st_mtime < oldest_allowed:
                candidate.unlink()
        except FileNotFoundError:  # another save removed it meanwhile
            continue


def _file_metadata(model: StyleClassifier, metadata: Mapping[str, object]) -> dict[str, str]:
    """The string metadata of `model`'s file: its structure plus its descriptive metadata updated by `metadata`."""
    descriptive = {**model.metadata, **{key: str(value) for key, value in metadata.items()}}
    reserved = sorted(set(descriptive) & set(_STRUCTURAL_KEYS))
    if reserved:
        raise ValueError(f"These metadata names are reserved by the file format: {', '.join(reserved)}.")
    missing = [key for key in _REQUIRED_DESCRIPTIVE_KEYS if not descriptive.get(key)]
    if missing:
        raise ValueError(f"Saving a style embedder needs the metadata: {', '.join(missing)} (e.g. 'SD15').")
    check_storable_class_names(model.class_names)
    _check_descriptive_texts(descriptive)
    structural = {
        "format": FORMAT_MARKER,
        "architecture_version": str(model.architecture_version),
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
    from a ComfyUI node. Raises `StyleEmbedderError`, naming the file (never its folder), for a
    missing, oversized, corrupt or truncated file, a `.safetensors` that is not a style embedder, an
    unknown architecture version, metadata out of bounds, missing, mis-shaped or non-float tensors,
    NaN or infinite weights, and a latent channel count other than `expected_channels`. Nothing is
    allocated for the model before the metadata and the header's tensor shapes agree.
    """
    name = Path(path).name
    _check_file_size(path, name)
    with _opened(path) as file:
        header = _read_header(file.metadata(), name)
        _check_channels(header, expected_channels, name)
        _check_tensor_layout(header, file, name)
        with torch.inference_mode(False):
            state = {key: file.get_tensor(key) for key in file.keys()}
            _check_finite(state, name)
            model = _model_for(header)
            model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def _check_file_size(path: str | os.PathLike, name: str) -> None:
    try:
        size = os.stat(path).st_size
    except FileNotFoundError as error:
        raise StyleEmbedderError(f"The style embedder file {name} does not exist.") from error
    except OSError as error:
        raise StyleEmbedderError(f"The style embedder file {name} cannot be read ({error.strerror}).") from error
    if size > MAX_FILE_BYTES:
        raise StyleEmbedderError(f"{name} is {size / 2**20:.1f} MiB; a style embedder is at most "
                                 f"{MAX_FILE_BYTES // 2**20} MiB, so this is not one (or it is damaged).")


@contextmanager
def _opened(path: str | os.PathLike) -> Iterator:
    """The open safetensors file, with read and format errors turned into `StyleEmbedderError`."""
    name = Path(path).name
    try:
        with safe_open(os.fspath(path), framework="pt") as file:
            yield file
    except FileNotFoundError as error:
        raise StyleEmbedderError(f"The style embedder file {name} does not exist.") from error
    except safetensors.SafetensorError as error:
        raise StyleEmbedderError(_unreadable_message(name, str(error))) from error
    except OSError as error:  # its text would name the file's folder: keep only the reason
        raise StyleEmbedderError(_unreadable_message(name, error.strerror or type(error).__name__)) from error


def _unreadable_message(name: str, reason: str) -> str:
    return (f"The style embedder file {name} cannot be read; it may be corrupt or only partly downloaded or "
            f"copied ({reason}).")


def _read_header(metadata: Mapping[str, str] | None, name: str) -> _StyleHeader:
    """The model description in a file's metadata, after checking that the file is a style embedder."""
    metadata = dict(metadata or {})
    if metadata.get("format") != FORMAT_MARKER:
        raise StyleEmbedderError(
            f"{name} is not a Particle Repulsion style embedder (it may be a model checkpoint or another "
            "kind of .safetensors file). Train one with the pack's style-embedder trainer."
        )
    version = metadata.get("architecture_version")
    known = [str(known_version) for known_version in KNOWN_ARCHITECTURE_VERSIONS]
    if version not in known:
        raise StyleEmbedderError(
            f"{name} uses style-embedder architecture version {str(version)[:20]}, which this version of the "
            f"pack does not know (it reads versions {', '.join(known)}); update the node pack or retrain."
        )
    try:
        header = _StyleHeader(
            latent_channels=int(metadata["latent_channels"]),
            class_names=_string_list(metadata["class_names"]),
            sigma_min=float(metadata["sigma_min"]),
            sigma_max=float(metadata["sigma_max"]),
            metadata={key: value for key, value in metadata.items() if key not in _STRUCTURAL_KEYS},
            architecture_version=int(version),
        )
        _check_header_bounds(header)
    except (KeyError, ValueError, TypeError, RecursionError) as error:  # RecursionError: JSON nested too deep
        reason = str(error)[:MAX_REASON_LENGTH]  # a list of thousands of names stays out of the message
        raise StyleEmbedderError(f"The metadata of {name} is damaged, incomplete or out of bounds: {reason}") from error
    return header


def _check_header_bounds(header: _StyleHeader) -> None:
    """ValueError unless every metadata field of `header` lies within the bounds of the module doc."""
    if not 1 <= header.latent_channels <= MAX_LATENT_CHANNELS:
        raise ValueError(f"latent_channels is {header.latent_channels}, outside 1 to {MAX_LATENT_CHANNELS}")
    check_storable_class_names(header.class_names)
    check_class_names(header.class_names)
    check_sigma_range(header.sigma_min, header.sigma_max)
    _check_descriptive_texts(header.metadata)


def check_storable_class_names(class_names: Sequence[str]) -> None:
    """ValueError unless there are at most `MAX_CLASSES` names, each at most `MAX_CLASS_NAME_LENGTH`
    characters of plain text (no line breaks or other control characters)."""
    if len(class_names) > MAX_CLASSES:
        raise ValueError(f"{len(class_names)} styles (classes); at most {MAX_CLASSES} are allowed")
    for class_name in class_names:
        if len(class_name) > MAX_CLASS_NAME_LENGTH or not _is_plain_text(class_name):
            raise ValueError(f"the style name {ascii(class_name[:40])} is longer than {MAX_CLASS_NAME_LENGTH} "
                             "characters or holds control characters (line breaks, tabs, ...)")


def _check_descriptive_texts(metadata: Mapping[str, str]) -> None:
    for key, value in metadata.items():
        if len(key) + len(value) > MAX_METADATA_TEXT_LENGTH or not _is_plain_text(key + value):
            raise ValueError(f"the metadata entry {ascii(key[:40])} is longer than {MAX_METADATA_TEXT_LENGTH} "
                             "characters or holds control characters")


def _is_plain_text(text: str) -> bool:
    """True when `text` has no control or format characters (Unicode category C)."""
    return not any(unicodedata.category(character).startswith("C") for character in text)


def _string_list(text: str) -> tuple[str, ...]:
    """The JSON list of strings in `text`, or a ValueError."""
    values = json.loads(text)
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise ValueError(f"expected a JSON list of names, got {text[:60]!r}")
    return tuple(values)


def _check_channels(header: _StyleHeader, expected_channels: int | None, name: str) -> None:
    if expected_channels is not None and header.latent_channels != expected_channels:
        raise StyleEmbedderError(
            f"{name}: this style embedder was trained for {header.latent_channels}-channel latents "
            f"({header.latent_format}) but the model makes {expected_channels}-channel latents."
        )


def _model_for(header: _StyleHeader) -> StyleClassifier:
    """An untrained `StyleClassifier` with the shape the (checked) header describes."""
    return StyleClassifier(header.latent_channels, header.class_names, sigma_min=header.sigma_min,
                           sigma_max=header.sigma_max, metadata=header.metadata,
                           architecture_version=header.architecture_version)


def _check_tensor_layout(header: _StyleHeader, file, name: str) -> None:
    """Raise `StyleEmbedderError` unless the file holds exactly the float tensors the header describes, in
    their shapes. Shapes and types come from the safetensors header; no tensor is loaded."""
    expected = _expected_shapes(header)
    stored = {key: file.get_slice(key) for key in file.keys()}
    problems = [f"missing {key}" for key in expected if key not in stored]
    problems += [f"unexpected {ascii(key[:60])}" for key in stored if key not in expected]
    for key in expected.keys() & stored.keys():
        shape, dtype = tuple(stored[key].get_shape()), stored[key].get_dtype()
        if shape != expected[key]:
            problems.append(f"{key} has shape {shape} instead of {expected[key]}")
        if dtype not in FLOAT_DTYPES:
            problems.append(f"{key} holds {dtype} instead of floats")
    if problems:
        shown = "; ".join(sorted(problems)[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise StyleEmbedderError(f"The weights in {name} do not match its description: {shown}.")


def _expected_shapes(header: _StyleHeader) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of the model the header describes, from a model on the meta device (no memory)."""
    with torch.device("meta"), torch.inference_mode(False):
        model = _model_for(header)
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def _check_finite(state: Mapping[str, torch.Tensor], name: str) -> None:
    broken = sorted(key for key, tensor in state.items() if not torch.isfinite(tensor).all())
    if broken:
        raise StyleEmbedderError(f"The weights in {name} contain NaN or infinite values (in {', '.join(broken)}); "
                                 "the file is damaged or its training diverged. Retrain it.")
