"""8-bit flash attention on Hopper through Pallas Mosaic GPU (SageAttention's recipe): softmax(q kᵀ / sqrt(d)) v with
Q·Kᵀ on the int8 tensor cores.

Quantization (plain jnp, one fused XLA pass over q and one over k: `quantize_q`, `quantize_k`):
- K is smoothed first: its mean over the tokens is subtracted per channel. Every query's logits then shift by one
  constant, which softmax ignores, and K's shared offset (large in DiTs) no longer eats the int8 range.
- Q: int8 per token, its scale carrying 1/sqrt(d) and log2(e), so the kernel's logits are already in base 2.
- K: int8 per block of `block_kv` tokens (one scale per block and head).
With per-token Q scales and per-block K scales the dequantization of a logits tile is one row vector c = q_scale *
k_block_scale, and p = exp2(s * c - m) is one FMA per element, as in bf16 flash attention (the exponentials bound this
kernel at head dim 64; an extra multiply per element would show).

The kernel: a grid of (head, query tile, batch) CTAs. One warpgroup issues TMA copies of K/V tiles into a
`stages`-deep shared-memory ring; `compute_wgs` compute warpgroups (64 queries each) run int8 wgmma for S = Q Kᵀ
(int32, exact), the online softmax in float32, and bf16 wgmma for P V. Two schedules:
- classic (FlashAttention-3's ping-pong, as JAX's `ops/gpu/attention_mgpu.py`): two compute warpgroups take turns on
  the tensor cores, one's softmax overlapping the other's matrix products, the two softmaxes never at once;
- overlapped (`OVERLAPPED`, the fastest at head dim 64): three free-running compute warpgroups, each issuing
  block j + 1's Q·Kᵀ and block j's P·V together and running block j + 1's softmax while P·V is on the tensor cores
  (FlashAttention-3's intra-warpgroup pipelining). At head dim 64 the softmax, not the matrix products, is the long
  pole, and one warpgroup's softmax alone cannot keep the SM's issue slots busy: more warpgroups in softmax at once
  is what pays (BENCHMARKS.md, issue 15).
Ragged lengths: queries are padded to a CTA's rows and the padded outputs dropped; keys are padded to `block_kv` and
the last block's padded columns masked to -inf. Other options (`AttentionConfig`, measured in BENCHMARKS.md): fp8
P·V, 128-query tiles, 256-key blocks, the logits' int-to-float conversion, packed fp16 exponentials.

Mosaic GPU kernels do not run in Pallas' CPU interpret mode; on CPU `int8_attention` runs `int8_attention_reference`
(the same quantization and the same base-2 softmax in plain jnp), and the `gpu` tests compare the kernel with it.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import mosaic
from pallas_kernels.common import require
from pallas_kernels.mosaic import plgpu, smem_transforms

LOG2E = math.log2(math.e)
FP8 = jnp.float8_e4m3fn
FP8_MAX = 448.0  # e4m3's largest value: P is scaled by it so its small values stay normal numbers
LOG2_FP8_MAX = math.log2(FP8_MAX)
# int32 -> float32 without the conversion instruction, which runs at the exponential's rate (16 per clock per SM on
# Hopper) and would double the per-logit special-function work: for |s| < 2^22, bitcast(s + bits(1.5 * 2^23)) is the
# float 1.5 * 2^23 + s exactly. Q·Kᵀ of int8 codes stays below 127² x 128 < 2^22 at head dims up to 128. The
# constant is folded into the softmax's per-row offset, so each logit still costs one FMA.
_MAGIC_BITS = 0x4B400000
_MAGIC_FLOAT = 12582912.0
PV_DTYPES = ("bf16", "fp8")
# Floor of a row's or block's absolute maximum, so an all-zero row (padding) gets a tiny positive scale: its codes are
# 0 and its logits 0 * c, never 0 * inf.
_TINY = 1e-30


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    block_q: int = 64  # queries per compute warpgroup (wgmma's M)
    block_kv: int = 128  # keys per pipeline step, and the K quantization block
    stages: int = 4  # K/V tiles in flight
    compute_wgs: int = 2  # compute warpgroups per CTA (2 or 3); a CTA takes compute_wgs * block_q queries
    # Two compute warpgroups take turns on the tensor cores (FlashAttention-3's ping-pong: one's softmax overlaps the
    # other's matrix products, and the two softmaxes never overlap). False: no turn-taking, every warpgroup runs
    # free and the warp schedulers interleave their softmaxes (needed for compute_wgs 3).
    ping_pong: bool = True
    # FlashAttention-3's intra-warpgroup pipelining: block j + 1's softmax runs while block j's P·V is on the tensor
    # cores (two accumulators live: more registers). bf16 P·V, no ping-pong.
    overlap: bool = False
    heads_minor: bool = True  # grid order (head, q tile, batch); False: (q tile, head, batch)
    pv: str = "bf16"  # P·V operands: "bf16", or "fp8" (e4m3: P scaled by 448, V per channel; twice the MMA rate)
    magic_convert: bool = True  # int32 logits to float by an integer add and a bitcast (see _MAGIC_BITS), not cvt
    # Exponentials two per instruction (ex2.approx.f16x2) on the fp32 exponent rounded to fp16; P and V in fp16 for
    # P·V (pv "bf16" only). Halves the special-function work per logit; fp16's 10-bit mantissa keeps P about as
    # exact as bf16 rounding did.
    exp16: bool = False


# The fastest schedule measured at head dim 64 (BENCHMARKS.md, issue 15: 1.17x cuDNN at CogVideoX-2B's shape, 1.21x
# at 5B's, against 0.92-0.94x for the classic schedule in the same run); slower at head dim 128 (Wan).
OVERLAPPED = AttentionConfig(compute_wgs=3, ping_pong=False, overlap=True)
# What `int8_attention` runs when no config is given, by head dim: the classic schedule, the one whole sampling runs
# have completed with on the GPU. The overlapped one's first two 50-step runs at 2B did not finish inside their
# device calls (compilation or a hang: not yet told apart), so it waits for one that does.
DEFAULT_CONFIGS = {64: AttentionConfig(), 128: AttentionConfig()}


def default_config(head_dim: int) -> AttentionConfig:
    return DEFAULT_CONFIGS.get(head_dim, AttentionConfig())


# ------------------------------------------------------------------------------------------------------ quantization
def quantize_q(q: jax.Array) -> tuple[jax.Array, jax.Array]:
    """q [B, N, H, D] -> int8 codes [B, N, H, D] and float32 scales [B, H, N] with 1/sqrt(D) * log2(e) folded in."""
    qf = q.astype(jnp.float32)
    scale = jnp.maximum(jnp.max(jnp.abs(qf), axis=-1, keepdims=True), _TINY) / 127.0
    codes = jnp.clip(jnp.round(qf / scale), -127, 127).astype(jnp.int8)
    folded = scale[..., 0] * (LOG2E / math.sqrt(q.shape[-1]))
    return codes, jnp.transpose(folded, (0, 2, 1))


def quantize_k(k: jax.Array, block_kv: int) -> tuple[jax.Array, jax.Array]:
    """k [B, N, H, D] -> smoothed int8 codes [B, N_pad, H, D] (N padded with zeros to a multiple of block_kv) and
    float32 scales [B, H, N_pad / block_kv], one per block of block_kv tokens."""
    batch, n, heads, dim = k.shape
    kf = k.astype(jnp.float32)
    kf = kf - jnp.mean(kf, axis=1, keepdims=True)
    n_pad = -(-n // block_kv) * block_kv
    kf = jnp.pad(kf, ((0, 0), (0, n_pad - n), (0, 0), (0, 0)))
    blocks = kf.reshape(batch, n_pad // block_kv, block_kv, heads, dim)
    scale = jnp.maximum(jnp.max(jnp.abs(blocks), axis=(2, 4), keepdims=True), _TINY) / 127.0
    codes = jnp.clip(jnp.round(blocks / scale), -127, 127).astype(jnp.int8).reshape(batch, n_pad, heads, dim)
    return codes, jnp.transpose(scale[:, :, 0, :, 0], (0, 2, 1))


def quantize_v(v: jax.Array, block_kv: int) -> tuple[jax.Array, jax.Array]:
    """v [B, N, H, D] -> e4m3 values transposed to [B, H, D, N_pad] (tokens minor: the K-major operand 8-bit
    wgmma needs for P·V; N padded with zeros to a multiple of block_kv) and float32 scales [B, H, D], one per
    channel."""
    batch, n, heads, dim = v.shape
    vf = jnp.transpose(v.astype(jnp.float32), (0, 2, 3, 1))
    scale = jnp.maximum(jnp.max(jnp.abs(vf), axis=-1), _TINY) / FP8_MAX
    values = (vf / scale[..., None]).astype(FP8)
    n_pad = -(-n // block_kv) * block_kv
    return jnp.pad(values, ((0, 0), (0, 0), (0, 0), (0, n_pad - n))), scale


def _exp2_f16x2(x):
    """exp2 of an fp16 WGMMA-layout array, two elements per `ex2.approx.f16x2` (Mosaic GPU's own exp2 is fp32 only).
    Uses Mosaic GPU's FragmentedArray internals through `plgpu.inline_mgpu`: pinned by the `gpu` tests."""
    shape = x.shape

    @plgpu.inline_mgpu(arg_types=(plgpu.Layout.WGMMA,),
                       return_type=plgpu.ShapeDtypeStruct(shape, jnp.float16, plgpu.Layout.WGMMA))
    def exp2(_, array):
        return array._pointwise(array._lift_fast_packed_instr("ex2.approx.f16x2", "ex2.approx.f16"))

    return exp2(x)


# --------------------------------------------------------------------------------------------------------- reference
@functools.partial(jax.jit, static_argnames=("block_kv", "pv", "exp16"))  # one compile, not one per primitive (tests, CPU)
def int8_attention_reference(q, k, v, *, block_kv: int = 128, pv: str = "bf16", exp16: bool = False) -> jax.Array:
    """The kernel's function in plain jnp: the same codes and scales, exact int32 Q·Kᵀ, base-2 softmax in float32 with
    P rounded to v's dtype for P·V (pv "fp8": P x 448 and V per channel in e4m3), fp32 accumulation, normalised at the
    end. q, k, v [B, N, H, D] -> q's dtype."""
    n_k = k.shape[1]
    q_codes, q_scale = quantize_q(q)
    k_codes, k_scale = quantize_k(k, block_kv)
    s = jnp.einsum("bqhd,bkhd->bhqk", q_codes, k_codes[:, :n_k], preferred_element_type=jnp.int32)
    k_scale_per_token = jnp.repeat(k_scale, block_kv, axis=-1)[..., :n_k]  # [B, H, N_k]
    s = s.astype(jnp.float32) * q_scale[..., :, None] * k_scale_per_token[..., None, :]
    m = jnp.max(s, axis=-1, keepdims=True)
    if exp16:  # the exponent rounded to fp16, P in fp16, V in fp16 (the kernel's exp16 option)
        p = jnp.exp2((s - m).astype(jnp.float16).astype(jnp.float32)).astype(jnp.float16).astype(jnp.float32)
        v = v.astype(jnp.float16)
    else:
        p = jnp.exp2(s - m)
    if pv == "fp8":
        p = p * FP8_MAX
        v_values, v_scale = quantize_v(v, block_kv)
        out = jnp.einsum("bhqk,bhdk->bqhd", p.astype(FP8).astype(jnp.float32),
                         v_values[..., :n_k].astype(jnp.float32), precision=lax.Precision.HIGHEST)
        out = out * v_scale[:, None]
    else:
        out = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    l = jnp.sum(p, axis=-1)  # [B, H, N_q]
    out = out / jnp.transpose(l, (0, 2, 1))[..., None]
    return out.astype(q.dtype)


# ------------------------------------------------------------------------------------------------------------ kernel
def _kernel(q_gmem, k_gmem, v_gmem, q_scale_gmem, k_scale_gmem, v_scale_gmem, out_gmem, scoped, *,
            config: AttentionConfig, kv_steps: int, kv_tail: int):
    """kv_steps key blocks; the last has kv_tail real keys (0: all block_kv are real). v_gmem is [B, N, H, D] in
    bf16/fp16, or for fp8 P·V [B, H, D, N] e4m3 (tokens minor: 8-bit wgmma takes its B operand K-major only), with
    P then going through shared memory (an 8-bit A operand in registers needs a layout the softmax's is not)."""
    block_q, block_kv, stages = config.block_q, config.block_kv, config.stages
    head_dim = q_gmem.shape[-1]
    fp8 = v_gmem.dtype == FP8
    batch, head, wg = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg")
    (q_smem2, k_smem, v_smem, o_smem2, p_smem2), (k_ready, v_ready, q_ready), (k_free, v_free), turn = scoped

    compute_wgs, ping_pong = config.compute_wgs, config.ping_pong

    def take_turn():
        """Both compute warpgroups arrive; the tensor cores pass to the other one (ping-pong only)."""
        if ping_pong:
            plgpu.barrier_arrive(turn)
            plgpu.barrier_wait(turn)

    @pl.when(wg < compute_wgs)
    def _compute():
        plgpu.set_max_registers(_COMPUTE_REGISTERS[compute_wgs], action="increase")
        q_smem, o_smem = q_smem2.at[wg], o_smem2.at[wg]
        p_smem = p_smem2.at[wg] if fp8 else None
        q0 = lax.axis_index("q_tile") * (compute_wgs * block_q) + wg * block_q
        plgpu.copy_gmem_to_smem(q_gmem.at[batch, pl.ds(q0, block_q), head], q_smem, q_ready.at[wg])
        q_scale = mosaic.load(q_scale_gmem.at[batch, head, pl.ds(q0, block_q)], plgpu.Layout.WGMMA.reduce(1))
        plgpu.barrier_wait(q_ready.at[wg])
        row = plgpu.Layout.WGMMA.reduce(1)
        m_i = plgpu.layout_cast(jnp.full((block_q,), -jnp.inf, jnp.float32), row)
        l_i = plgpu.layout_cast(jnp.full((block_q,), 0.0, jnp.float32), row)
        acc = plgpu.layout_cast(jnp.full((block_q, head_dim), 0.0, jnp.float32), plgpu.Layout.WGMMA)
        plgpu.barrier_wait(k_ready.at[0])
        pl.when(wg == 1)(take_turn)

        def slot_of(kv):
            return lax.rem(kv, jnp.array(stages, kv.dtype))

        def load_k_scale(kv):
            """Block kv's K scale as a row vector (one value repeated over the rows).
            Loaded before the block's matrix products are issued and first used after them: a global load whose
            result is used, even multiplied, before the issue stalls the warpgroup for its whole latency (rounds
            29-30). The overlapped loop loads it one block ahead and carries it."""
            return mosaic.load(k_scale_gmem.at[batch, head, kv], row)

        def softmax(s, k_scale, m_i, tail: int = 0):
            """One int32 logits tile and its block's K scale -> P (float32, or fp16 with exp16), the old rows' rescale
            factor alpha and the new running maximum. (The callers update the output and the running sum: their
            order there is what round 24 measured.)"""
            if config.magic_convert:  # s holds 1.5 * 2^23 + the logit's integer part
                s, offset = lax.bitcast_convert_type(s + jnp.int32(_MAGIC_BITS), jnp.float32), _MAGIC_FLOAT
            else:
                s, offset = s.astype(jnp.float32), 0.0
            if tail:
                cols = plgpu.broadcasted_iota(jnp.int32, (block_q, block_kv), 1, layout=plgpu.Layout.WGMMA)
                s = jnp.where(cols < tail, s, -jnp.inf)
            c = q_scale * k_scale  # the logits' scale, a row vector
            m_new = jnp.maximum(m_i, (s.max(axis=1) - offset) * c)
            alpha = jnp.exp2(m_i - m_new)
            # fp8: P x 448 (subtracted from the exponent, free), so its small values stay normal e4m3 numbers
            shift = (m_new - LOG2_FP8_MAX if fp8 else m_new) + offset * c
            exponent = s * lax.broadcast_in_dim(c, s.shape, [0]) - lax.broadcast_in_dim(shift, s.shape, [0])
            p = _exp2_f16x2(exponent.astype(jnp.float16)) if config.exp16 else jnp.exp2(exponent)
            return p, alpha, m_new

        def running_sum(l_i, alpha, p):
            return l_i * alpha + p.astype(jnp.float32).sum(axis=1)

        def rescale(acc, alpha):
            return acc * lax.broadcast_in_dim(alpha, acc.shape, [0])

        def step(kv, carry, tail: int = 0):
            acc, m_i, l_i = carry
            slot = slot_of(kv)
            # Loaded before the Q·Kᵀ issue and used after its wait: this arrangement measured fastest for this
            # schedule (11.98 ms at 2B in round 24; carried one block ahead instead, 13.04 in round 31).
            k_scale = load_k_scale(kv)

            def qk(acc_ref):
                plgpu.wgmma(acc_ref, q_smem, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
                take_turn()
                return acc_ref[...]

            s = pl.run_scoped(qk, plgpu.ACC((block_q, block_kv), jnp.int32))
            plgpu.barrier_arrive(k_free.at[slot])
            p, alpha, m_new = softmax(s, k_scale, m_i, tail)
            acc = rescale(acc, alpha)
            l_i = running_sum(l_i, alpha, p)
            if fp8:
                p_smem[...] = p.astype(FP8)
                plgpu.commit_smem()  # visible to the tensor cores' async reads
                acc, l_i, m_new = lax.optimization_barrier((acc, l_i, m_new))
                p_operand, v_operand = p_smem, plgpu.transpose_ref(v_smem.at[slot], (1, 0))
            else:
                p_operand = p.astype(v_smem.dtype)
                acc, l_i, m_new, p_operand = lax.optimization_barrier((acc, l_i, m_new, p_operand))
                v_operand = v_smem.at[slot]
            if ping_pong:
                plgpu.barrier_arrive(turn)  # softmax done
            plgpu.barrier_wait(v_ready.at[slot])
            if ping_pong:
                plgpu.barrier_wait(turn)  # the tensor cores are ours

            def pv(acc_ref):
                plgpu.wgmma(acc_ref, p_operand, v_operand)
                nxt = kv + 1

                @pl.when(nxt < kv_steps)
                def _():
                    plgpu.barrier_wait(k_ready.at[slot_of(nxt)])

            if fp8:  # this block's product in its own accumulator, added in float32 (fp8 wgmma sums narrower)
                def product(acc_ref):
                    pv(acc_ref)
                    return acc_ref[...]
                acc = acc + pl.run_scoped(product, plgpu.ACC((block_q, head_dim), jnp.float32))
            else:
                acc = pl.run_state(pv)(plgpu.ACC.init(acc))
            plgpu.barrier_arrive(v_free.at[slot])
            return acc, m_new, l_i

        def overlapped_step(kv, carry, tail: int = 0):
            """FlashAttention-3's intra-warpgroup pipelining. On entry: P of block kv and the output already rescaled
            for it. Issue Q·Kᵀ of block kv + 1 and P·V of block kv, take the logits as soon as the first is done,
            and run block kv + 1's softmax while P·V is still on the tensor cores. `tail` masks block kv + 1."""
            acc, m_i, l_i, p, k_scale = carry  # k_scale: block kv + 1's
            slot, nxt = slot_of(kv), slot_of(kv + 1)
            k_scale_next = load_k_scale(jnp.minimum(kv + 2, kv_steps - 1))
            plgpu.barrier_wait(v_ready.at[slot])

            def products(s_ref, o_ref):
                mosaic.accumulator_store(o_ref, acc)
                plgpu.wgmma(s_ref, q_smem, plgpu.transpose_ref(k_smem.at[nxt], (1, 0)))
                plgpu.wgmma(o_ref, p, v_smem.at[slot])
                s = plgpu.wgmma_accumulator_load(s_ref, wait_n=1)  # Q·Kᵀ done; P·V may still run
                plgpu.barrier_arrive(k_free.at[nxt])
                p_next, alpha, m_new = softmax(s, k_scale, m_i, tail)
                l_new = running_sum(l_i, alpha, p_next)
                p_next = p_next.astype(v_smem.dtype)
                o = o_ref[...]
                plgpu.barrier_arrive(v_free.at[slot])

                @pl.when(kv + 2 < kv_steps)
                def _():
                    plgpu.barrier_wait(k_ready.at[slot_of(kv + 2)])

                return rescale(o, alpha), m_new, l_new, p_next, k_scale_next

            return pl.run_scoped(products, plgpu.ACC((block_q, block_kv), jnp.int32),
                                 plgpu.ACC((block_q, head_dim), jnp.float32))

        def overlapped_loop(acc, m_i, l_i):
            """Block 0's logits and softmax, the overlapped steps for blocks 1.. (the tail block peeled), and the
            last block's P·V."""
            k_scale = load_k_scale(0)

            def first(s_ref):
                plgpu.wgmma(s_ref, q_smem, plgpu.transpose_ref(k_smem.at[0], (1, 0)))
                return s_ref[...]

            s = pl.run_scoped(first, plgpu.ACC((block_q, block_kv), jnp.int32))
            plgpu.barrier_arrive(k_free.at[0])
            p, alpha, m_i = softmax(s, k_scale, m_i, kv_tail if kv_steps == 1 else 0)
            l_i = running_sum(l_i, alpha, p)
            carry = (acc, m_i, l_i, p.astype(v_smem.dtype), load_k_scale(jnp.minimum(1, kv_steps - 1)))
            if kv_steps > 1:
                plgpu.barrier_wait(k_ready.at[slot_of(jnp.int32(1))])
            full_steps = kv_steps - 1 - (1 if kv_tail and kv_steps > 1 else 0)
            carry = lax.fori_loop(0, full_steps, overlapped_step, carry)
            if kv_tail and kv_steps > 1:
                carry = overlapped_step(jnp.int32(full_steps), carry, tail=kv_tail)
            acc, m_i, l_i, p, _ = carry
            last = slot_of(jnp.int32(kv_steps - 1))
            plgpu.barrier_wait(v_ready.at[last])

            def last_pv(acc_ref):
                plgpu.wgmma(acc_ref, p, v_smem.at[last])

            acc = pl.run_state(last_pv)(plgpu.ACC.init(acc))
            plgpu.barrier_arrive(v_free.at[last])
            return acc, m_i, l_i

        def classic_loop(acc, m_i, l_i):
            """The full blocks, then the tail block peeled (its padded keys masked)."""
            full_steps = kv_steps - (1 if kv_tail else 0)
            carry = lax.fori_loop(0, full_steps, step, (acc, m_i, l_i))
            return step(jnp.int32(full_steps), carry, tail=kv_tail) if kv_tail else carry

        carry = (overlapped_loop if config.overlap else classic_loop)(acc, m_i, l_i)
        acc, m_i, l_i = carry
        pl.when(wg == 0)(take_turn)
        v_scale = mosaic.load(v_scale_gmem.at[batch, head], plgpu.Layout.WGMMA.reduce(0))
        acc = acc * lax.broadcast_in_dim(1.0 / l_i, acc.shape, [0]) * lax.broadcast_in_dim(v_scale, acc.shape, [1])
        o_smem[...] = acc.astype(o_smem.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, out_gmem.at[batch, pl.ds(q0, block_q), head])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == compute_wgs)
    def _memory():
        plgpu.set_max_registers(_MEMORY_REGISTERS[compute_wgs], action="decrease")

        def fetch(kv, slot):
            rows = (batch, pl.ds(kv * block_kv, block_kv), head)
            v_tile = v_gmem.at[batch, head, :, pl.ds(kv * block_kv, block_kv)] if fp8 else v_gmem.at[rows]
            plgpu.copy_gmem_to_smem(k_gmem.at[rows], k_smem.at[slot], k_ready.at[slot])
            plgpu.copy_gmem_to_smem(v_tile, v_smem.at[slot], v_ready.at[slot])

        for i in range(min(stages, kv_steps)):
            fetch(i, i)

        @pl.loop(0, max(kv_steps - stages, 0))
        def _(i):
            slot = lax.rem(i, jnp.array(stages, i.dtype))
            plgpu.barrier_wait(k_free.at[slot])
            plgpu.barrier_wait(v_free.at[slot])
            fetch(i + stages, slot)


def _entry(q_gmem, k_gmem, v_gmem, q_scale_gmem, k_scale_gmem, v_scale_gmem, out_gmem, *, config: AttentionConfig,
           stages: int, kv_steps: int, kv_tail: int):
    head_dim = q_gmem.shape[-1]
    block_q, block_kv, wgs = config.block_q, config.block_kv, config.compute_wgs
    int8_t = smem_transforms(head_dim, jnp.int8)
    out_t = smem_transforms(head_dim, out_gmem.dtype)
    if v_gmem.dtype == FP8:
        fp8_t = smem_transforms(block_kv, FP8)
        v_tiles = plgpu.SMEM((stages, head_dim, block_kv), FP8, transforms=fp8_t)
        p_tiles = plgpu.SMEM((wgs, block_q, block_kv), FP8, transforms=fp8_t)
    else:
        v_tiles = plgpu.SMEM((stages, block_kv, head_dim), v_gmem.dtype, transforms=out_t)
        p_tiles = None
    scratch = [
        plgpu.SMEM((wgs, block_q, head_dim), jnp.int8, transforms=int8_t),
        plgpu.SMEM((stages, block_kv, head_dim), jnp.int8, transforms=int8_t),
        v_tiles,
        plgpu.SMEM((wgs, block_q, head_dim), out_gmem.dtype, transforms=out_t),
        p_tiles,
    ]
    ready = (plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=wgs))
    free = (plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),) * 2
    config = dataclasses.replace(config, stages=stages)
    pl.run_scoped(
        lambda *scoped: _kernel(q_gmem, k_gmem, v_gmem, q_scale_gmem, k_scale_gmem, v_scale_gmem, out_gmem, scoped,
                                config=config, kv_steps=kv_steps, kv_tail=kv_tail),
        scratch, ready, free, plgpu.Barrier(num_arrivals=2),
        collective_axes="wg",
    )


SMEM_BYTES = 227 * 1024
# Registers per thread after `setmaxnreg`, by compute warpgroups (multiples of 8). Together they must fit in what the
# launch gave the CTA: 65,536 / threads per thread, rounded down to 8 (168 x 384 threads, 128 x 512); an increase
# beyond it never returns (setmaxnreg waits for registers nobody frees: four warpgroups at 120 hung in round 30, and
# at the 112 that fits, a 128-key logits tile alone would take 64 of them).
_COMPUTE_REGISTERS = {2: 232, 3: 160}
_MEMORY_REGISTERS = {2: 40, 3: 24}


def _fit_stages(config: AttentionConfig, head_dim: int, v_itemsize: int, kv_steps: int) -> int:
    fixed = config.compute_wgs * config.block_q * (head_dim * 3 + config.block_kv) + 2048  # q, out (bf16), P (fp8)
    per_stage = config.block_kv * head_dim * (1 + v_itemsize)
    fits = (SMEM_BYTES - fixed) // per_stage
    # One stage would deadlock: block j's P·V waits for block j + 1's keys, which need block j's slot.
    require(fits >= 2 or kv_steps == 1, f"int8 attention kernel: {config} at head dim {head_dim} leaves shared memory "
            f"for {fits} K/V stage(s); it needs 2 (smaller block_kv or block_q)")
    return max(1, min(config.stages, kv_steps, fits))


def int8_attention_mgpu(q, k, v, *, config: AttentionConfig | None = None) -> jax.Array:
    """The compiled kernel (Hopper only), quantization included. q [B, Nq, H, D], k and v [B, Nk, H, D]; v bf16 or
    fp16; D 64 or 128. Returns q's dtype."""
    config = config or default_config(q.shape[-1])
    require(q.shape[-1] in (64, 128), f"int8 attention kernel: head dim {q.shape[-1]} is not supported (64 or 128)")
    require(config.pv in PV_DTYPES, f"int8 attention kernel: P·V dtype {config.pv!r} is not one of {PV_DTYPES}")
    require(not (config.exp16 and config.pv == "fp8"), "int8 attention kernel: exp16 takes P·V in fp16, not fp8")
    q_codes, q_scale = quantize_q(q)
    k_codes, k_scale = quantize_k(k, config.block_kv)
    if config.pv == "fp8":
        v_values, v_scale = quantize_v(v, config.block_kv)
        return attend_quantized(q_codes, q_scale, k_codes, k_scale, v_values, v_scale, n_k=v.shape[1],
                                out_dtype=q.dtype, config=config)
    v = v.astype(jnp.float16) if config.exp16 else v  # P·V in fp16: P comes out of the exponentials in fp16
    return attend_quantized(q_codes, q_scale, k_codes, k_scale, v, config=config).astype(q.dtype)


def attend_quantized(q_codes, q_scale, k_codes, k_scale, v, v_scale=None, *, n_k: int | None = None,
                     out_dtype=None, config: AttentionConfig | None = None) -> jax.Array:
    """The kernel alone, on `quantize_q`'s and `quantize_k`'s outputs (k padded to a multiple of block_kv) and v:
    [B, Nk, H, D] bf16/fp16, or `quantize_v`'s e4m3 [B, H, D, Nk_pad] with its scales (then n_k names the real key
    count). Returns [B, Nq, H, D] in out_dtype (default: v's)."""
    config = config or default_config(q_codes.shape[-1])
    require(config.compute_wgs in _COMPUTE_REGISTERS,
            f"int8 attention kernel: {config.compute_wgs} compute warpgroups (2 or 3)")
    require(not config.overlap or (config.pv == "bf16" and not config.exp16 and not config.ping_pong),
            "int8 attention kernel: overlap takes bf16 P·V, no exp16 and ping_pong=False")
    require(config.compute_wgs == 2 or not config.ping_pong,
            "int8 attention kernel: ping-pong takes two compute warpgroups; set ping_pong=False for three")
    batch, n_q, heads, head_dim = q_codes.shape
    fp8 = v.dtype == FP8
    n_k = n_k if fp8 else v.shape[1]
    out_dtype = out_dtype or v.dtype
    block_q, block_kv = config.block_q, config.block_kv
    cta_q = config.compute_wgs * block_q
    n_q_pad = -(-n_q // cta_q) * cta_q
    n_k_pad = k_codes.shape[1]
    require(n_k_pad == -(-n_k // block_kv) * block_kv, f"int8 attention: k codes have {n_k_pad} rows for {n_k} keys")
    q_codes = jnp.pad(q_codes, ((0, 0), (0, n_q_pad - n_q), (0, 0), (0, 0)))
    q_scale = jnp.pad(q_scale, ((0, 0), (0, 0), (0, n_q_pad - n_q)), constant_values=1.0)
    if not fp8:
        v = jnp.pad(v, ((0, 0), (0, n_k_pad - n_k), (0, 0), (0, 0)))
        v_scale = jnp.ones((batch, heads, head_dim), jnp.float32)
    kv_steps = n_k_pad // block_kv
    # One K scale per block, repeated block_q times so the kernel loads it as a row vector (no scalar loads).
    k_scale_rows = jnp.broadcast_to(k_scale[..., None], (*k_scale.shape, block_q))
    stages = _fit_stages(config, head_dim, jnp.dtype(v.dtype).itemsize, kv_steps)
    q_tiles = n_q_pad // cta_q
    if config.heads_minor:
        grid, names = (heads, q_tiles, batch), ("heads", "q_tile", "batch")
    else:
        grid, names = (q_tiles, heads, batch), ("q_tile", "heads", "batch")
    kernel = plgpu.kernel(
        functools.partial(_entry, config=config, stages=stages, kv_steps=kv_steps, kv_tail=n_k % block_kv),
        out_type=jax.ShapeDtypeStruct((batch, n_q_pad, heads, head_dim), out_dtype),
        grid=grid,
        grid_names=names,
        num_threads=config.compute_wgs + 1,
        thread_name="wg",
        # Lane semantics (per-thread register layouts: WGMMA, its row and column reductions), named explicitly: jax
        # 0.11 lowers to warpgroup semantics by default, where this kernel's loop bounds would not lower.
        compiler_params=plgpu.CompilerParams(approx_math=True, lowering_semantics=plgpu.LoweringSemantics.Lane),
    )
    return kernel(q_codes, k_codes, v, q_scale, k_scale_rows, v_scale)[:, :n_q]


def int8_attention(q, k, v, *, config: AttentionConfig | None = None) -> jax.Array:
    """8-bit attention: the Mosaic GPU kernel on a Hopper GPU, its jnp reference anywhere else."""
    what = "int8 attention"
    require(q.ndim == 4 and k.shape == v.shape and k.ndim == 4 and q.shape[0] == k.shape[0]
            and q.shape[2:] == k.shape[2:], f"{what}: q, k, v must be [B, N, H, D] with one B, H and D; got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    config = config or default_config(q.shape[-1])
    if mosaic.available() and v.dtype in (jnp.bfloat16, jnp.float16):
        return int8_attention_mgpu(q, k, v, config=config)
    return int8_attention_reference(q, k, v, block_kv=config.block_kv, pv=config.pv, exp16=config.exp16)
