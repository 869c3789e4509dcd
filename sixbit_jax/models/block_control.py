"""How the 6Bit runtime drives a DiT's stack of blocks: one `lax.switch` per block on its route, the temporal delta
cache, and the per-block statistics the sampler folds into its state.

The model hands `run_controlled_blocks` its stacked block state, the token streams its blocks update (CogVideoX:
video and text; Wan: video alone, its text context being constant) and a function that runs one block; this module
knows nothing about what a block computes.

The delta cache Δ(l) = Y - X is one array per stream, [L, B, N, D], carried through the layer scan and updated in
place (one resident copy, not an input copy plus an output copy). Stored narrower than float32 it keeps one decode
scale per layer and stream: fp8 stores Δ / scale with scale = amax / the format's largest value, so no delta
overflows it."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sixbit_jax import parallel
from sixbit_jax.layers import LinearRuntime, QuantDense
from sixbit_jax.layers.quant_dense import PDR_OUTLIER_RATIO

# Per-block routes, chosen on the device each step (lax.switch index): reuse the cached delta, or run the block's
# linears on one path (see layers.quant_dense).
SKIP, BF16, INT8, NVFP4, PDR, CALIBRATE = range(6)
ROUTE_NAMES = ("skip", "bf16", "int8", "nvfp4", "pdr", "calibrate")


class DeltaCache(NamedTuple):
    """Δ = Y - X of every block at its last compute, one array per stream. Without TDC the arrays are [L, 1, 1, 1]
    placeholders."""

    deltas: tuple[jax.Array, ...]  # per stream [L, B, N, D] in the cache dtype
    scale: jax.Array  # [L, streams] float32 decode scales (1 unless the dtype is fp8)

    @classmethod
    def create(cls, num_layers: int, stream_shapes: tuple[tuple[int, ...], ...], dtype, *,
               placeholders: bool = False) -> "DeltaCache":
        """Zeros of [L, *shape] per stream, or [L, 1, 1, 1] per stream with `placeholders`."""
        shapes = [(1, 1, 1) if placeholders else tuple(shape) for shape in stream_shapes]
        return cls(tuple(jnp.zeros((num_layers, *shape), dtype) for shape in shapes),
                   jnp.ones((num_layers, len(shapes)), jnp.float32))

    def holds(self, streams: tuple[jax.Array, ...]) -> bool:
        """Static: whether this cache has room for deltas shaped like `streams` (False for the placeholders)."""
        return all(d.shape[1:] == s.shape for d, s in zip(self.deltas, streams))

    def read(self, layer: jax.Array) -> tuple[jax.Array, ...]:
        """Layer `layer`'s deltas, one per stream, decoded to float32."""
        scale = self.scale[layer]
        return tuple(d[layer].astype(jnp.float32) * scale[i] for i, d in enumerate(self.deltas))

    def write(self, layer: jax.Array, deltas: tuple[jax.Array, ...], keep: jax.Array) -> "DeltaCache":
        """The cache with layer `layer` replaced by the encoded deltas, or left as it is where `keep`."""
        encoded = [_encode(delta, stored.dtype) for delta, stored in zip(deltas, self.deltas)]
        stored = tuple(parallel.split_tokens(old.at[layer].set(jnp.where(keep, old[layer], new)), axis=2)
                       for old, (new, _) in zip(self.deltas, encoded))
        scale = jnp.where(keep, self.scale[layer], jnp.stack([s for _, s in encoded]))
        return DeltaCache(stored, self.scale.at[layer].set(scale))


def _encode(delta: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """(stored, decode scale). fp8 is scaled so the largest |Δ| lands on the format's largest value; wider types are
    stored as they are."""
    dtype = jnp.dtype(dtype)
    if dtype.itemsize > 1:
        return delta.astype(dtype), jnp.ones((), jnp.float32)
    amax = jnp.abs(delta.astype(jnp.float32)).max()
    scale = jnp.where(amax > 0, amax / float(jnp.finfo(dtype).max), 1.0)
    return (delta.astype(jnp.float32) / scale).astype(dtype), scale


class BlockControl(NamedTuple):
    """What the sampler tells the blocks for one step: a route per block and the delta cache a skip reads."""

    routes: jax.Array  # [L] int32
    cache: DeltaCache
    outlier_ratio: float | jax.Array = PDR_OUTLIER_RATIO  # PDR threshold (a number, or traced)
    backend: str | None = None  # quantized-linear backend (static); None: kernels on GPU, jnp references on CPU
    possible_routes: tuple[int, ...] = tuple(range(len(ROUTE_NAMES)))  # static: the only branches compiled
    attention: str = "bf16"  # static: the blocks' self-attention precision (RuntimeConfig.attention)
    nvfp4_operands: str = "bf16"  # static: the NVFP4 linears' MMA operands (RuntimeConfig.nvfp4_operands)


class BlockReport(NamedTuple):
    """Per block, from one forward with control: Γ = |Y - X|₁ / |X|₁; the delta change
    r = |Δ_new - Δ_old|₁ / |Δ_old|₁ (with a cache; 0 without); PDR's bf16 fallbacks; under CALIBRATE the NVFP4
    sensitivity at the block output, E = |Y_nvfp4 - Y|₁ / |Y|₁ (a second forward of the block from the same input
    with every linear on NVFP4 activations), the mean of its linears' own relative errors and each activation-
    quantized linear's input outlier ratio max|x| / mean|x| (in call order); and the updated delta cache."""

    finite: jax.Array  # [L] bool
    gamma: jax.Array  # [L] float32
    change: jax.Array  # [L] float32
    fallbacks: jax.Array  # [L] float32, number of linears that ran bf16 under PDR
    nvfp4_error: jax.Array  # [L] float32, block output
    linear_error: jax.Array  # [L] float32, mean over the block's linears
    outlier_ratio: jax.Array | None = None  # [L, linears] under CALIBRATE (NaN elsewhere): each input's ratio
    cache: DeltaCache | None = None


def l1_ratio(nums: list[jax.Array], dens: list[jax.Array]) -> jax.Array:
    """sum |nums|₁ / sum |dens|₁, part by part (no concatenated copy of activation-sized arrays)."""
    l1 = lambda parts: sum(jnp.abs(p.astype(jnp.float32)).sum() for p in parts)  # noqa: E731
    return l1(nums) / jnp.maximum(l1(dens), 1e-30)


def activation_linears(block: nnx.Module) -> int:
    """How many linears of a block quantize their activations (every QuantDense but the weight-only ones)."""
    return sum(1 for _, node in nnx.iter_graph(block) if isinstance(node, QuantDense) and not node.weight_only)


Streams = tuple[jax.Array, ...]
RunBlock = Callable[[nnx.Module, Streams, LinearRuntime], Streams]


def run_controlled_blocks(block_def, block_state, streams: Streams, run_block: RunBlock,
                          control: BlockControl) -> tuple[Streams, BlockReport]:
    """Scan the stacked blocks under `control`. `streams` are the token arrays a block updates ([B, N, D] each:
    CogVideoX's (video, text), Wan's (video,)); `run_block(block, streams, runtime)` returns their new values.
    Returns the final streams and the BlockReport."""
    num_layers = control.routes.shape[0]
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731

    def one_block(carry, xs):
        streams, cache = carry
        streams = tuple(parallel.split_tokens(x, axis=1) for x in streams)  # sequence-parallel: stays split
        state, route, layer = xs
        block = nnx.merge(block_def, state)

        zero = jnp.zeros((), jnp.float32)
        unmeasured = jnp.full((activation_linears(block),), jnp.nan, jnp.float32)

        def skip(*streams):  # decodes inside the branch: no float32 copy of the delta outside it
            new = tuple(x + delta.astype(x.dtype) for x, delta in zip(streams, cache.read(layer)))
            return new, zero, zero, zero, unmeasured

        def compute(path: str):
            def branch(*streams):
                runtime = LinearRuntime(path=path, outlier_ratio=control.outlier_ratio, backend=control.backend,
                                        attention=control.attention, nvfp4_operands=control.nvfp4_operands)
                new = tuple(run_block(block, streams, runtime))
                fallbacks = sum(runtime.fallbacks, zero)
                linear_error = sum(runtime.nvfp4_errors, zero) / max(len(runtime.nvfp4_errors), 1)
                block_error, ratios = zero, unmeasured
                if path == "calibrate":  # the same block on NVFP4 activations, from the same input
                    quantized = run_block(block, streams, LinearRuntime(path="nvfp4", backend=control.backend,
                                                                        attention=control.attention,
                                                                        nvfp4_operands=control.nvfp4_operands))
                    block_error = l1_ratio([f32(q) - f32(y) for q, y in zip(quantized, new)], list(new))
                    if len(runtime.outlier_ratios) != unmeasured.shape[0]:  # each such linear runs once per block
                        raise AssertionError(f"{len(runtime.outlier_ratios)} linear calls recorded, expected "
                                             f"{unmeasured.shape[0]}")
                    ratios = jnp.stack(runtime.outlier_ratios) if runtime.outlier_ratios else unmeasured
                return new, fallbacks, block_error, linear_error, ratios
            return branch

        # Only the routes this run can take are compiled: every extra branch costs compile time and may hold its
        # own activation-sized temporaries.
        possible = control.possible_routes
        branches = [skip if r == SKIP else compute(ROUTE_NAMES[r]) for r in possible]
        branch_of_route = jnp.asarray([possible.index(r) if r in possible else 0 for r in range(len(ROUTE_NAMES))])
        new, fallbacks, error, linear_error, ratios = jax.lax.switch(branch_of_route[route], branches, *streams)
        new = tuple(parallel.split_tokens(y, axis=1) for y in new)
        steps = [y - x for y, x in zip(new, streams)]
        gamma = l1_ratio(steps, list(streams))
        finite = jnp.stack([jnp.isfinite(y).all() for y in new]).all()
        change = jnp.zeros((), jnp.float32)
        if cache.holds(streams):  # static: TDC or calibration
            deltas = cache.read(layer)  # elementwise into the reductions below (fused by XLA)
            change = l1_ratio([f32(step) - delta for step, delta in zip(steps, deltas)], list(deltas))
            cache = cache.write(layer, tuple(steps), keep=route == SKIP)
        report = BlockReport(finite, gamma, change, fallbacks, error, linear_error, ratios)
        return (new, cache), report

    (streams, cache), report = jax.lax.scan(
        one_block, (tuple(streams), control.cache), (block_state, control.routes, jnp.arange(num_layers)))
    return streams, report._replace(cache=cache)
