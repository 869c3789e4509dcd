"""What the Pallas Mosaic GPU kernels share: the API import, where they can run, shared-memory tile transforms, and
the one call whose signature differs between the jax versions we support."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp

try:
    from jax.experimental.pallas import mosaic_gpu as plgpu
except ImportError:  # pragma: no cover (every jax we support has it)
    plgpu = None


def available() -> bool:
    """True where Mosaic GPU kernels run compiled: a Hopper (sm_90) GPU and Pallas Mosaic GPU's `kernel` API."""
    if plgpu is None or not hasattr(plgpu, "kernel") or jax.default_backend() != "gpu":
        return False
    return str(getattr(jax.devices()[0], "compute_capability", "")).startswith("9")


# H100 and H200: the grid size used when a kernel is only lowered (tests on a machine without a GPU).
HOPPER_SMS = 132


def num_sms() -> int:
    """Streaming multiprocessors of the GPU: the persistent kernels launch one CTA each."""
    return getattr(jax.devices()[0], "core_count", HOPPER_SMS) if jax.default_backend() == "gpu" else HOPPER_SMS


def smem_transforms(minor_elems: int, dtype) -> tuple:
    """Tiling and the widest swizzle for a shared-memory tile whose minor dimension has `minor_elems` elements:
    the layout wgmma and TMA want (rows of 8, 128-byte swizzle where the row is long enough)."""
    bits = jnp.dtype(dtype).itemsize * 8
    swizzle = plgpu.find_swizzle(minor_elems * bits)
    return plgpu.TilingTransform((8, swizzle * 8 // bits)), plgpu.SwizzleTransform(swizzle)


def _load_takes_index() -> bool:
    return plgpu is not None and "idx" in inspect.signature(plgpu.load).parameters and \
        inspect.signature(plgpu.load).parameters["idx"].default is inspect.Parameter.empty


_LOAD_NEEDS_INDEX = _load_takes_index()


def load(ref, layout):
    """A whole ref (SMEM or GMEM) into registers with `layout`. jax 0.10 wants an index argument, 0.11 deprecates it."""
    if _LOAD_NEEDS_INDEX:
        return plgpu.load(ref, (), layout=layout, optimized=False)
    return plgpu.load(ref, layout=layout, optimized=False)


def accumulator_store(acc_ref, value) -> None:
    """Set a wgmma accumulator (`plgpu.ACC` allocated by `pl.run_scoped`) to a register value, so the next wgmma adds
    to it. Pallas has the primitive (both jax versions we support) but does not export it."""
    from jax._src.pallas.mosaic_gpu import primitives  # noqa: PLC0415 (private: kept to this one place)

    primitives.wgmma_accumulator_store(acc_ref, value)
