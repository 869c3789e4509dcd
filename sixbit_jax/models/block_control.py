"""How the 6Bit runtime drives a DiT's stack of blocks: one `lax.switch` per block on its route, the temporal delta
cache, and the per-block statistics the sampler folds into its state.

The model hands `run_controlled_blocks` its stacked block state and a function that runs one block; this module
knows nothing about what a block computes, only that it maps (video, text) tokens to new ones.

The delta cache Δ(l) = Y - X is one array per stream, [L, B, N, D], carried through the layer scan and updated in
place (one resident copy, not an input copy plus an output copy). Stored narrower than float32 it keeps one decode
scale per layer and stream: fp8 stores Δ / scale with scale = amax / the format's largest value, so no delta
overflows it."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sixbit_jax.layers import LinearRuntime, QuantDense

# Per-block routes, chosen on the device each step (lax.switch index): reuse the cached delta, or run the block's
# linears on one path (see layers.quant_dense).
SKIP, BF16, INT8, NVFP4, PDR, CALIBRATE = range(6)
ROUTE_NAMES = ("skip", "bf16", "int8", "nvfp4", "pdr", "calibrate")


class DeltaCache(NamedTuple):
    """Δ = Y - X of every block at its last compute. Without TDC the arrays are [L, 1, 1, 1] placeholders."""

    video: jax.Array  # [L, B, N_video, D] in the cache dtype
    text: jax.Array  # [L, B, N_text, D]
    scale: jax.Array  # [L, 2] float32: decode scales of video and text (1 unless the dtype is fp8)

    @classmethod
    def create(cls, num_layers: int, video_shape: tuple[int, ...] | None, text_shape: tuple[int, ...] | None,
               dtype) -> "DeltaCache":
        """Zeros of [L, *shape] per stream; None shapes give the placeholders."""
        video_shape, text_shape = video_shape or (1, 1, 1), text_shape or (1, 1, 1)
        return cls(jnp.zeros((num_layers, *video_shape), dtype), jnp.zeros((num_layers, *text_shape), dtype),
                   jnp.ones((num_layers, 2), jnp.float32))

    def holds(self, video: jax.Array) -> bool:
        """Static: whether this cache has room for deltas shaped like `video` (False for the placeholders)."""
        return self.video.shape[1:] == video.shape

    def read(self, layer: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Layer `layer`'s (video, text) deltas, decoded to float32."""
        scale = self.scale[layer]
        return self.video[layer].astype(jnp.float32) * scale[0], self.text[layer].astype(jnp.float32) * scale[1]

    def write(self, layer: jax.Array, video_delta: jax.Array, text_delta: jax.Array, keep: jax.Array) -> "DeltaCache":
        """The cache with layer `layer` replaced by the encoded deltas, or left as it is where `keep`."""
        video, video_scale = _encode(video_delta, self.video.dtype)
        text, text_scale = _encode(text_delta, self.text.dtype)
        video = jnp.where(keep, self.video[layer], video)
        text = jnp.where(keep, self.text[layer], text)
        scale = jnp.where(keep, self.scale[layer], jnp.stack([video_scale, text_scale]))
        return DeltaCache(self.video.at[layer].set(video), self.text.at[layer].set(text),
                          self.scale.at[layer].set(scale))


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
    outlier_ratio: float = 25.0  # PDR threshold (static)
    backend: str | None = None  # quantized-linear backend (static); None: kernels on GPU, jnp references on CPU
    possible_routes: tuple[int, ...] = tuple(range(len(ROUTE_NAMES)))  # static: the only branches compiled


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


RunBlock = Callable[[nnx.Module, jax.Array, jax.Array, LinearRuntime], tuple[jax.Array, jax.Array]]


def run_controlled_blocks(block_def, block_state, video: jax.Array, text: jax.Array, run_block: RunBlock,
                          control: BlockControl) -> tuple[jax.Array, jax.Array, BlockReport]:
    """Scan the stacked blocks under `control`; returns the final (video, text) and the BlockReport."""
    num_layers = control.routes.shape[0]

    def one_block(carry, xs):
        video, text, cache = carry
        state, route, layer = xs
        block = nnx.merge(block_def, state)

        zero = jnp.zeros((), jnp.float32)
        unmeasured = jnp.full((activation_linears(block),), jnp.nan, jnp.float32)

        def skip(video, text):  # decodes inside the branch: no float32 copy of the delta outside it
            delta_video, delta_text = cache.read(layer)
            return (video + delta_video.astype(video.dtype), text + delta_text.astype(text.dtype), zero, zero, zero,
                    unmeasured)

        def compute(path: str):
            def branch(video, text):
                runtime = LinearRuntime(path=path, outlier_ratio=control.outlier_ratio, backend=control.backend)
                new_video, new_text = run_block(block, video, text, runtime)
                fallbacks = sum(runtime.fallbacks, zero)
                linear_error = sum(runtime.nvfp4_errors, zero) / max(len(runtime.nvfp4_errors), 1)
                block_error, ratios = zero, unmeasured
                if path == "calibrate":  # the same block on NVFP4 activations, from the same input
                    nvfp4 = LinearRuntime(path="nvfp4", backend=control.backend)
                    q_video, q_text = run_block(block, video, text, nvfp4)
                    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
                    block_error = l1_ratio([f32(q_video) - f32(new_video), f32(q_text) - f32(new_text)],
                                           [new_video, new_text])
                    if len(runtime.outlier_ratios) != unmeasured.shape[0]:  # each such linear runs once per block
                        raise AssertionError(f"{len(runtime.outlier_ratios)} linear calls recorded, expected "
                                             f"{unmeasured.shape[0]}")
                    ratios = jnp.stack(runtime.outlier_ratios) if runtime.outlier_ratios else unmeasured
                return new_video, new_text, fallbacks, block_error, linear_error, ratios
            return branch

        # Only the routes this run can take are compiled: every extra branch costs compile time and may hold its
        # own activation-sized temporaries.
        possible = control.possible_routes
        branches = [skip if r == SKIP else compute(ROUTE_NAMES[r]) for r in possible]
        branch_of_route = jnp.asarray([possible.index(r) if r in possible else 0 for r in range(len(ROUTE_NAMES))])
        new_video, new_text, fallbacks, error, linear_error, ratios = jax.lax.switch(branch_of_route[route], branches,
                                                                                    video, text)
        step_video, step_text = new_video - video, new_text - text
        gamma = l1_ratio([step_video, step_text], [video, text])
        finite = jnp.isfinite(new_video).all() & jnp.isfinite(new_text).all()
        change = jnp.zeros((), jnp.float32)
        if cache.holds(video):  # static: TDC or calibration
            delta_video, delta_text = cache.read(layer)  # elementwise into the reductions below (fused by XLA)
            f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
            change = l1_ratio([f32(step_video) - delta_video, f32(step_text) - delta_text], [delta_video, delta_text])
            cache = cache.write(layer, step_video, step_text, keep=route == SKIP)
        report = BlockReport(finite, gamma, change, fallbacks, error, linear_error, ratios)
        return (new_video, new_text, cache), report

    (video, text, cache), report = jax.lax.scan(
        one_block, (video, text, control.cache), (block_state, control.routes, jnp.arange(num_layers)))
    return video, text, report._replace(cache=cache)
