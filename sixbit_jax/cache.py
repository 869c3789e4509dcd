"""Converted checkpoints that commands make for themselves (the shipped shapes model for `demo` and `eval`), kept in
a cache keyed by the source's content and the conversion options, so a run reuses them and never writes into a
folder the user owns.

Where: $SIXBIT_CACHE_DIR, else $XDG_CACHE_HOME/sixbit-jax, else ~/.cache/sixbit-jax."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from sixbit_jax.checkpoint import exclusive_lock
from sixbit_jax.errors import CheckpointError

FORMAT_VERSION = 1  # bump when the converted layout changes: older entries are then simply not found


def cache_root() -> Path:
    if os.environ.get("SIXBIT_CACHE_DIR"):
        return Path(os.environ["SIXBIT_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sixbit-jax"


def source_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes (the shipped model is a few MB)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cached_checkpoint(src: Path, options: dict, convert: Callable[[Path], object]) -> Path:
    """The cached conversion of `src` with `options`, made by `convert(dst)` (an atomic writer) on first use.
    Concurrent runs wait for the one converting and then reuse its result."""
    key = hashlib.sha256(json.dumps({"source": source_digest(src), "options": options, "format": FORMAT_VERSION},
                                    sort_keys=True).encode()).hexdigest()[:16]
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create the cache folder {root} ({e.strerror}); set SIXBIT_CACHE_DIR to a "
                              f"writable folder") from None
    dst = root / f"{src.name}-{key}"
    if (dst / "sixbit.json").exists():
        return dst
    with exclusive_lock(root / f".{dst.name}.cache-lock", f"the cache entry {dst} is being made", wait=True):
        if not (dst / "sixbit.json").exists():  # another run may have made it while this one waited
            convert(dst)
    return dst
