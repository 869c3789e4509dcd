"""Converted checkpoints: orbax-saved parameters plus `sixbit.json` (format tag, dtype, model config).

Layout of a checkpoint folder:
    sixbit.json                          {"format": ..., "dtype": "bfloat16", "config": {...diffusers config...}}
    state/<leaf path>/                   one orbax PyTree checkpoint per parameter leaf of the model's
                                         `nnx.to_pure_dict` tree, e.g. state/transformer_blocks.attn1.to_q.weight/

One orbax item per leaf lets conversion stream: each leaf is written and dropped before the next is built, so host
memory holds a few leaves, never the model (orbax's save of a whole tree keeps a second, in-flight copy of it).
Loading restores leaf by leaf straight onto the device.

Writes are atomic: everything goes to a hidden temporary folder beside the destination, renamed into place only
when complete, so a failed or interrupted write leaves nothing at the destination."""

from __future__ import annotations

import contextlib
import functools
import ctypes
import glob
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sixbit_jax.config import transformer_config
from sixbit_jax.errors import CheckpointError
from sixbit_jax.models import model_class
from sixbit_jax.quant.spec import QuantSpec

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


def abstract_state(make_module: Callable[[], nnx.Module]) -> dict:
    """The parameter tree (`nnx.to_pure_dict` layout) of the module `make_module` builds, as ShapeDtypeStructs,
    without allocating anything."""
    return nnx.to_pure_dict(nnx.state(nnx.eval_shape(make_module)))


def abstract_module_params(module_class, cfg, dtype) -> dict:
    """`abstract_state` of module_class(cfg, dtype=dtype, rngs=...), the tracing done once per class, config and
    dtype (tracing a VAE's init takes a second; converters and loaders ask repeatedly). A fresh tree per call."""
    return nnx.to_pure_dict(_abstract_module_state(module_class, cfg, jnp.dtype(dtype)))


@functools.lru_cache(maxsize=16)
def _abstract_module_state(module_class, cfg, dtype):
    return nnx.state(nnx.eval_shape(lambda: module_class(cfg, dtype=dtype, rngs=nnx.Rngs(0))))


def module_from_leaves(make_module: Callable[[], nnx.Module], leaves: Iterable[tuple[tuple[str, ...], Any]],
                       what: str = "model"):
    """Build the module `make_module` describes from (path, array) pairs, moving each leaf to the default device (in
    the module's dtype for that leaf) as it arrives, so host memory holds one leaf at a time. Every leaf must come
    exactly once with its shape."""
    graphdef, state = nnx.split(nnx.eval_shape(make_module))
    expected = dict(flat_leaves(nnx.to_pure_dict(state)))
    device = jax.devices()[0]  # explicit: converted leaves live on the CPU device, the model on the default one
    placed: dict[tuple[str, ...], jax.Array] = {}
    found: dict[str, tuple] = {}
    for path, value in leaves:
        found[_name(path)] = tuple(np.shape(value))
        spec = expected.get(path)
        if spec is not None and tuple(np.shape(value)) == tuple(spec.shape):
            placed[path] = jax.device_put(value, device).astype(spec.dtype)
    problems = shape_problems({_name(k): v.shape for k, v in expected.items()}, found, "parameter")
    if problems:
        raise CheckpointError(f"{what} parameters do not match the model:\n  " + "\n  ".join(problems))
    nnx.replace_by_pure_dict(state, nest_leaves(placed.items()))
    return nnx.merge(graphdef, state)


def abstract_params(cfg, dtype, quant: QuantSpec | None = None) -> dict:
    """The parameter tree of a model of this config (any family) as ShapeDtypeStructs, without allocating anything.
    Float leaves have `dtype`; a quantized model's NVFP4 leaves have their own (uint8 codes and scale bytes, float32
    scales)."""
    dtype = parse_dtype(dtype)
    return abstract_state(lambda: model_class(cfg)(cfg, dtype=dtype, rngs=nnx.Rngs(0), quant=quant))


def model_from_params(cfg, params: dict, *, dtype=None, attention_impl: str | None = None,
                      quant: QuantSpec | None = None):
    """Build a model (the config's family) from a parameter tree in `nnx.to_pure_dict` layout (leaves numpy or jax
    arrays). `dtype` (default: the output head's) applies to float leaves; quantized leaves keep their formats."""
    dtype = parse_dtype(dtype) if dtype is not None else jnp.dtype(params["proj_out"]["weight"].dtype)
    return module_from_leaves(lambda: model_class(cfg)(cfg, dtype=dtype, rngs=nnx.Rngs(0),
                                                       attention_impl=attention_impl, quant=quant),
                              flat_leaves(params))


def flat_leaves(tree: dict, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flat_leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def nest_leaves(leaves: Iterable[tuple[tuple[str, ...], Any]]) -> dict:
    """The inverse of flat_leaves: (path, value) pairs -> nested dict."""
    tree: dict = {}
    for path, value in leaves:
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def _name(path: tuple) -> str:
    return ".".join(map(str, path))  # list-held submodules (the VAE's blocks) have int keys


def shape_problems(expected: dict[str, tuple], found: dict[str, tuple], noun: str) -> list[str]:
    """One line per missing, unexpected or mis-shaped entry, each named with its expected and found shapes."""
    problems = [f"missing {noun} {k} (expected shape {tuple(expected[k])})"
                for k in sorted(expected.keys() - found.keys())]
    problems += [f"unexpected {noun} {k} (shape {tuple(found[k])})" for k in sorted(found.keys() - expected.keys())]
    problems += [f"{noun} {k}: expected shape {tuple(expected[k])}, found {tuple(found[k])}"
                 for k in sorted(expected.keys() & found.keys()) if tuple(expected[k]) != tuple(found[k])]
    return problems


def _check_tree(expected: dict, found: dict) -> None:
    problems = shape_problems({_name(k): v.shape for k, v in flat_leaves(expected)},
                              {_name(k): np.shape(v) for k, v in flat_leaves(found)}, "parameter")
    if problems:
        raise CheckpointError("parameter tree does not match the model:\n  " + "\n  ".join(problems))


def check_destination(dst: str | Path, overwrite: bool) -> None:
    if Path(dst).exists() and not overwrite:
        raise CheckpointError(f"destination {dst} already exists (pass overwrite / --force to replace it)")


@contextlib.contextmanager
def atomic_folder(dst: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder beside `dst`; renames it to `dst` if the block succeeds, deletes it otherwise.

    One writer per destination: a lock on `.DST.lock` beside `dst` is held for the whole write (the kernel drops it
    when the process dies, even by SIGKILL), and a second writer fails at once naming the first. Temporary folders
    left by killed writers are removed by the next writer."""
    dst = Path(dst).absolute()
    check_destination(dst, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(dst.parent / f".{dst.name}.lock", f"{dst} is being written"):
        _remove_stale_partials(dst)
        tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:  # mkdir inside: a Ctrl-C landing just after it must still remove the folder (a race the suite hit)
            tmp.mkdir()
            yield tmp
            if dst.exists() and not overwrite:
                raise CheckpointError(f"destination {dst} appeared while this run was writing; nothing was replaced")
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


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, busy: str, *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` (created if missing) for the block. Taken: CheckpointError saying
    `busy` and by whom, or with `wait`, block until it is free. The file stays afterwards: unlinking it would let
    two processes lock two different files of one name."""
    import fcntl

    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise CheckpointError(f"{busy} by {holder}; wait for it to finish or choose another destination") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"sixbit process {os.getpid()}")
        lock.flush()
        yield  # closing the file releases the lock


def _remove_stale_partials(dst: Path) -> None:
    """Temporary folders of writers that died (SIGKILL, power loss) before they could clean up. Only called under
    the writer lock, so no live writer owns one."""
    for partial in dst.parent.glob(f".{glob.escape(dst.name)}.partial-*"):
        _remove_tree(partial)


def _remove_tree(path: Path, attempts: int = 5) -> None:
    """rmtree that survives files appearing while it runs (a writer thread finishing late), retrying briefly."""
    for attempt in range(attempts):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.05 * (attempt + 1))


def write_leaves(folder: Path, expected: dict[tuple[str, ...], Any], leaves: Iterable[tuple[tuple[str, ...], Any]],
                 record: dict) -> None:
    """Write parameter leaves (path, array) into `folder` as they arrive (one orbax item each), then `record` as its
    sixbit.json. Every leaf of `expected` (path -> ShapeDtypeStruct) must come exactly once, with its shape and
    dtype. Not atomic by itself: callers write into an `atomic_folder`."""
    import orbax.checkpoint as ocp  # imported here: orbax is slow to import and only needed for checkpoint I/O

    written = set()
    # Synchronous checkpointer: nothing writes into `folder` once a save returns or raises.
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        for path, value in leaves:
            spec = expected.get(path)
            if spec is None or path in written:
                raise CheckpointError(f"unexpected or repeated parameter {_name(path)}")
            if tuple(value.shape) != tuple(spec.shape) or jnp.dtype(value.dtype) != spec.dtype:
                raise CheckpointError(f"parameter {_name(path)}: expected {tuple(spec.shape)} {spec.dtype.name}, "
                                      f"found {tuple(value.shape)} {jnp.dtype(value.dtype).name}")
            checkpointer.save(folder / "state" / _name(path), args=ocp.args.PyTreeSave({"value": value}))
            written.add(path)
            del value
            _return_freed_memory()
    missing = sorted(_name(p) for p in expected.keys() - written)
    if missing:
        raise CheckpointError(f"parameters never written: {', '.join(missing)}")
    (folder / INFO_NAME).write_text(json.dumps({"format": FORMAT, **record}, indent=2) + "\n")


def transformer_record(cfg, dtype, quant: QuantSpec | None = None, info: dict | None = None) -> dict:
    """sixbit.json of a transformer checkpoint (the folder `load_checkpoint` reads)."""
    return {"dtype": parse_dtype(dtype).name, "config": cfg.to_dict(), "quant": quant.to_dict() if quant else None,
            **(info or {})}


def write_checkpoint(dst: str | Path, cfg, dtype, leaves: Iterable[tuple[tuple[str, ...], Any]], *,
                     overwrite: bool = False, info: dict | None = None, extra_folders: dict[str, Path] | None = None,
                     quant: QuantSpec | None = None, before_commit: Callable[[Path], None] | None = None) -> Path:
    """Write a transformer's parameter leaves (path, array) as they arrive, then the config; atomic. Every leaf of
    the model must come exactly once, with its shape and dtype (`dtype` for float leaves; a quantized model's NVFP4
    leaves have their own). `extra_folders` {name: folder} are copied in as they are (a pipeline's small companions,
    such as the shapes model's text encoder); `before_commit(tmp)` may add more before the rename."""
    dtype = parse_dtype(dtype)
    expected = dict(flat_leaves(abstract_params(cfg, dtype, quant)))
    with atomic_folder(dst, overwrite=overwrite) as tmp:
        write_leaves(tmp, expected, leaves, transformer_record(cfg, dtype, quant, info))
        for name, folder in (extra_folders or {}).items():
            shutil.copytree(folder, tmp / name)
        if before_commit is not None:
            before_commit(tmp)
    return Path(dst)


def _return_freed_memory() -> None:
    """Hand freed heap back to the OS. Orbax's writer threads allocate in glibc's per-thread arenas, which keep
    freed memory; without this, host memory ratchets up leaf after leaf until it reaches the model's size."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def save_checkpoint(dst: str | Path, cfg, params: dict, **kwargs) -> Path:
    """Write a whole parameter tree (numpy or jax leaves, one dtype) and the config to `dst`, atomically."""
    dtypes = {jnp.dtype(x.dtype) for x in jax.tree.leaves(params)}
    if len(dtypes) != 1:
        raise CheckpointError(f"parameters must share one dtype to be saved; found {sorted(map(str, dtypes))}")
    dtype = parse_dtype(dtypes.pop())
    _check_tree(abstract_params(cfg, dtype), params)
    return write_checkpoint(dst, cfg, dtype, flat_leaves(params), **kwargs)


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


def restore_leaves(path: Path, expected: dict) -> Iterator[tuple[tuple[str, ...], jax.Array]]:
    """(path, array) for every leaf of the `expected` tree (ShapeDtypeStructs), restored one at a time from a
    checkpoint folder's orbax items straight onto the default device."""
    import orbax.checkpoint as ocp

    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        for leaf_path, spec in flat_leaves(expected):
            target = {"value": jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=sharding)}
            try:
                value = checkpointer.restore(path / "state" / _name(leaf_path),
                                             args=ocp.args.PyTreeRestore(target))["value"]
            except Exception as e:  # orbax raises many types; all mean this leaf is missing or unreadable
                raise CheckpointError(f"{path}: cannot restore parameter {_name(leaf_path)} "
                                      f"({type(e).__name__}: {e})") from None
            if tuple(value.shape) != tuple(spec.shape):
                raise CheckpointError(f"{path}: parameter {_name(leaf_path)} has shape {tuple(value.shape)}, "
                                      f"the config expects {tuple(spec.shape)}")
            yield leaf_path, value


def load_checkpoint(path: str | Path, *, dtype=None, attention_impl: str | None = None):
    """Load a converted checkpoint (any family) as a ready model on the default device. `dtype` casts on load."""
    path = Path(path).absolute()
    info = read_info(path)
    cfg = transformer_config(info.get("config"), f"{path / INFO_NAME}")
    stored = parse_dtype(info["dtype"])
    quant = QuantSpec.from_dict(info.get("quant"))
    leaves = list(restore_leaves(path, abstract_params(cfg, stored, quant)))
    return model_from_params(cfg, nest_leaves(leaves), dtype=dtype or stored, attention_impl=attention_impl,
                             quant=quant)
