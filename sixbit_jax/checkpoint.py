"""Converted checkpoints: an orbax parameter tree plus `sixbit.json` (format tag, dtype, model config).

Layout of a checkpoint folder:
    sixbit.json   {"format": ..., "dtype": "bfloat16", "config": {...diffusers-style model config...}}
    state/        orbax StandardCheckpointer tree, the model's `nnx.to_pure_dict` layout

Writes are atomic: everything goes to a hidden temporary folder beside the destination, renamed into place only
when complete, so a failed or interrupted write leaves nothing at the destination."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sixbit_jax.config import CogVideoXConfig
from sixbit_jax.errors import CheckpointError
from sixbit_jax.models import CogVideoXTransformer3D

FORMAT = "sixbit-jax/1"
INFO_NAME = "sixbit.json"
DTYPES = {"bf16": jnp.bfloat16, "fp16": jnp.float16, "fp32": jnp.float32}


def parse_dtype(name: str | Any):
    if isinstance(name, str):
        if name in DTYPES:
            return jnp.dtype(DTYPES[name])
        try:
            dtype = jnp.dtype(name)
        except TypeError:
            raise CheckpointError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}") from None
    else:
        dtype = jnp.dtype(name)
    if dtype not in {jnp.dtype(d) for d in DTYPES.values()}:
        raise CheckpointError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPES)}")
    return dtype


def abstract_params(cfg: CogVideoXConfig, dtype) -> dict:
    """The parameter tree of a model of this config as ShapeDtypeStructs, without allocating anything."""
    model = nnx.eval_shape(lambda: CogVideoXTransformer3D(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(model))


def model_from_params(cfg: CogVideoXConfig, params: dict, *, dtype=None, attention_impl: str | None = None):
    """Build a model from a parameter tree in `nnx.to_pure_dict` layout (leaves numpy or jax arrays)."""
    dtype = parse_dtype(dtype) if dtype is not None else jnp.dtype(jax.tree.leaves(params)[0].dtype)
    model = nnx.eval_shape(
        lambda: CogVideoXTransformer3D(cfg, dtype=dtype, rngs=nnx.Rngs(0), attention_impl=attention_impl))
    graphdef, state = nnx.split(model)
    expected = nnx.to_pure_dict(state)
    _check_tree(expected, params)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda x: jnp.asarray(x, dtype), params))
    return nnx.merge(graphdef, state)


def _check_tree(expected: dict, found: dict) -> None:
    exp = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(found)}
    problems = [f"missing parameter {k} (expected shape {exp[k]})" for k in sorted(exp.keys() - got.keys())]
    problems += [f"unexpected parameter {k} (shape {got[k]})" for k in sorted(got.keys() - exp.keys())]
    problems += [f"parameter {k}: expected shape {exp[k]}, found {got[k]}"
                 for k in sorted(exp.keys() & got.keys()) if tuple(exp[k]) != tuple(got[k])]
    if problems:
        raise CheckpointError("parameter tree does not match the model:\n  " + "\n  ".join(problems))


def check_destination(dst: str | Path, overwrite: bool) -> None:
    if Path(dst).exists() and not overwrite:
        raise CheckpointError(f"destination {dst} already exists (pass overwrite / --force to replace it)")


@contextlib.contextmanager
def atomic_folder(dst: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder beside `dst`; renames it to `dst` if the block succeeds, deletes it otherwise."""
    dst = Path(dst).absolute()
    check_destination(dst, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if dst.exists():
            old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(dst, old)
            os.rename(tmp, dst)
            _remove_tree(old)
        else:
            os.rename(tmp, dst)
    except BaseException:
        _remove_tree(tmp)
        raise


def _remove_tree(path: Path, attempts: int = 5) -> None:
    """rmtree that survives files appearing while it runs (a writer thread finishing late), retrying briefly."""
    for attempt in range(attempts):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.05 * (attempt + 1))


def save_checkpoint(dst: str | Path, cfg: CogVideoXConfig, params: dict, *, overwrite: bool = False,
                    info: dict | None = None, before_commit: Callable[[], None] | None = None) -> Path:
    """Write `params` (numpy or jax leaves, one dtype) and the config to `dst`, atomically."""
    import orbax.checkpoint as ocp  # imported here: orbax is slow to import and only needed for checkpoint I/O

    dtypes = {jnp.dtype(x.dtype) for x in jax.tree.leaves(params)}
    if len(dtypes) != 1:
        raise CheckpointError(f"parameters must share one dtype to be saved; found {sorted(map(str, dtypes))}")
    dtype = parse_dtype(dtypes.pop())
    _check_tree(abstract_params(cfg, dtype), params)
    with atomic_folder(dst, overwrite=overwrite) as tmp:
        # The context manager joins orbax's background writer threads, so nothing writes into `tmp` after this
        # block, whether it succeeds or not.
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp / "state", params)
            checkpointer.wait_until_finished()
        record = {"format": FORMAT, "dtype": jnp.dtype(dtype).name, "config": cfg.to_dict(), **(info or {})}
        (tmp / INFO_NAME).write_text(json.dumps(record, indent=2) + "\n")
        if before_commit is not None:
            before_commit()
    return Path(dst)


def read_info(path: str | Path) -> dict:
    path = Path(path)
    info_path = path / INFO_NAME
    if not info_path.exists():
        raise CheckpointError(f"{path} is not a sixbit-jax checkpoint (no {INFO_NAME}); convert a diffusers "
                              f"folder first with `sixbit convert`")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{info_path} is corrupt: {e}") from None
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {info.get('format')!r} (expected {FORMAT})")
    return info


def load_checkpoint(path: str | Path, *, dtype=None, attention_impl: str | None = None) -> CogVideoXTransformer3D:
    """Load a converted checkpoint as a ready model on the default device. `dtype` casts on load."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    info = read_info(path)
    cfg = CogVideoXConfig.from_dict(info["config"])
    stored = parse_dtype(info["dtype"])
    device = jax.devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                          abstract_params(cfg, stored))
    try:
        params = ocp.StandardCheckpointer().restore(path / "state", target)
    except Exception as e:  # orbax raises many types; all mean the stored tree is unreadable or mismatched
        raise CheckpointError(f"{path}: cannot restore parameters ({type(e).__name__}: {e})") from None
    return model_from_params(cfg, params, dtype=dtype or stored, attention_impl=attention_impl)
