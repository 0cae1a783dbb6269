"""Checks of node inputs that ComfyUI's own validation lets through.

A ComfyUI server may be reachable by people other than its owner, so every input is untrusted. ComfyUI
checks a FLOAT input only against its `min` and `max`, and NaN compares false with both: `NaN` (which
the server's JSON parser accepts) reaches the node. STRING inputs arrive with any length and any
characters. Every check raises ValueError with a message naming the input. Pure Python: no `comfy`.
"""
from __future__ import annotations

import math
import unicodedata
from typing import Mapping

NAME_PUNCTUATION = frozenset("-_. ")
# Windows refuses these as file names whatever the extension ("CON.safetensors" included).
WINDOWS_DEVICE_NAMES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                                  *(f"LPT{i}" for i in range(1, 10))})


def require_finite_number(name: str, value) -> float:
    """`value` as a float when it is a finite real number; otherwise ValueError naming the input `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"The input {name} must be a number, got {type(value).__name__}.")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"The input {name} is {number}; give a finite number.")
    return number


def require_finite_numbers(values: Mapping[str, object]) -> None:
    """`require_finite_number` on every `{input name: value}` of a node call."""
    for name, value in values.items():
        require_finite_number(name, value)


def name_problem(name: str, max_bytes: int) -> str | None:
    """Why `name` cannot be a file or folder name, or None when it can.

    Allowed: letters and digits (any script), `-`, `_`, `.` and space; at most `max_bytes` bytes in
    UTF-8 (file systems count bytes); no leading dot or space, no trailing space, no Windows device name.
    """
    if not name:
        return "it is empty"
    if len(name.encode("utf-8")) > max_bytes:  # first: the cheap check bounds the character scan below
        return f"it is longer than {max_bytes} bytes"
    refused = sorted({character for character in name if not (character.isalnum() or character in NAME_PUNCTUATION)})
    if refused:
        shown = ", ".join(repr(character) for character in refused[:5])
        return f"it holds characters other than letters, digits, '-', '_', '.' and space: {shown}"
    if name[0] in ". " or name[-1] == " ":
        return "it starts with a dot or a space, or ends with a space"
    if name.split(".")[0].upper() in WINDOWS_DEVICE_NAMES:
        return "it is a reserved device name on Windows"
    return None


def require_safe_name(input_name: str, name: str, max_bytes: int) -> str:
    """`name` when `name_problem` finds nothing; otherwise ValueError naming the input."""
    problem = name_problem(name, max_bytes)
    if problem is not None:
        raise ValueError(f"The {input_name} {shown_text(name)} cannot be used: {problem}.")
    return name


def require_plain_text(input_name: str, text: str, max_length: int) -> str:
    """`text` when it has at most `max_length` characters and no control characters (line breaks
    included); otherwise ValueError naming the input."""
    if len(text) > max_length:
        raise ValueError(f"The {input_name} has {len(text)} characters; at most {max_length} are allowed.")
    if any(unicodedata.category(character).startswith("C") for character in text):
        raise ValueError(f"The {input_name} {shown_text(text)} holds control or format characters (line breaks, "
                         "tabs, NUL, direction marks...); use plain text.")
    return text


def shown_text(text: str, max_length: int = 40) -> str:
    """`text` quoted for an error message: escaped and shortened, so that a message stays one short line."""
    shortened = text if len(text) <= max_length else text[:max_length] + "..."
    return ascii(shortened)
