"""Checks on command-line arguments, run before any work starts: numeric ranges as argparse types (argparse then
prints the argument's name and exits with code 2), and paths that must exist or be writable."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from sixbit_jax.errors import InputError


def _number(text: str, kind, condition, wanted: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not (math.isfinite(value) and condition(value)):
        raise argparse.ArgumentTypeError(f"must be {wanted}; got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a number >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a number > 0")


def fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def activation_bits(text: str) -> float:
    return _number(text, float, lambda v: 4 <= v <= 8, "between 4 (all NVFP4) and 8 (all INT8)")


def hadamard_block(text: str) -> int:
    return _number(text, int, lambda v: v >= 16 and v & (v - 1) == 0, "a power of two >= 16 (NVFP4 blocks are 16)")


def _nearest_existing(path: Path) -> Path:
    return next((p for p in [path, *path.parents] if p.exists()), Path("."))


def _check_writable_parent(path: Path, what: str) -> None:
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise InputError(f"{what} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{what} {path}: cannot write in {parent}")


def writable_file(path: str | Path, what: str, suffixes: tuple[str, ...]) -> Path:
    """A file the run will be able to write: the suffix, and a folder (existing or creatable) that is not a file."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{what} {path}: use a {' or '.join(suffixes)} file name")
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{what} {path}: the file exists and cannot be overwritten")
    _check_writable_parent(path, what)
    return path


def writable_folder(path: str | Path, what: str) -> Path:
    """A folder the run will be able to write into (existing, or creatable)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file; give a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK):
            raise InputError(f"{what} {path}: cannot write in this folder")
    else:
        _check_writable_parent(path, what)
    return path


def existing_folder(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path}: no such folder")
    if not path.is_dir():
        raise InputError(f"{what} {path} is a file; give a folder")
    return path


def existing_file(path: str | Path, what: str, suffixes: tuple[str, ...] | None = None) -> Path:
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{what} {path}: use a {' or '.join(suffixes)} file")
    if not path.exists():
        raise InputError(f"{what} {path}: file not found")
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file")
    return path
