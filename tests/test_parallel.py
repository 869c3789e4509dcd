"""Sequence parallelism (sixbit_jax/parallel.py) on simulated CPU devices: Ulysses attention over 4 devices equals
single-device attention (float32, 1e-5), with the XLA and the 8-bit attention; a head count that does not divide is
named; the sampler with the 6Bit runtime over 2 devices gives the same latents and takes the same routes. The
simulated devices need XLA_FLAGS before jax starts, so the checks run in one subprocess."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from sixbit_jax.errors import InputError
    from sixbit_jax.layers.attention import dot_product_attention
    from sixbit_jax.parallel import sequence_mesh, sequence_parallel, shard_tokens

    assert len(jax.devices()) == 4, jax.devices()
    mesh = sequence_mesh(4)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, (2, 64, 8, 16), jnp.float32) for key in keys)
    for implementation in ("xla", "int8"):
        want = dot_product_attention(q, k, v, implementation=implementation)
        with sequence_parallel(mesh):  # traced inside: attention runs as Ulysses over the mesh
            got = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, implementation=implementation))(
                *(shard_tokens(x, mesh) for x in (q, k, v)))
        assert got.sharding.spec[1] == "seq", got.sharding  # the output stays split along the tokens
        err = float(jnp.abs(got - want).max() / jnp.abs(want).max())
        assert err < 1e-5, (implementation, err)
    try:
        with sequence_parallel(mesh):
            dot_product_attention(q[:, :, :6], k[:, :, :6], v[:, :, :6])
        raise SystemExit("6 heads over 4 devices was accepted")
    except InputError as e:
        assert "has 6 heads" in str(e), e
    try:
        sequence_mesh(8)
        raise SystemExit("8 devices on a 4-device machine were accepted")
    except InputError as e:
        assert "has 4 cpu devices" in str(e), e

    # The sampler with the 6Bit runtime (DMPQ + TDC + PDR) over 2 devices: same latents, same routes.
    from flax import nnx
    from sixbit_jax.config import CogVideoXConfig
    from sixbit_jax.models import CogVideoXTransformer3D
    from sixbit_jax.models.block_control import SKIP
    from sixbit_jax.quant.model import quantize_model
    from sixbit_jax.runtime import RuntimeConfig
    from sixbit_jax.sampling import SamplerSettings, sample

    cfg = CogVideoXConfig(num_layers=3, num_attention_heads=2, attention_head_dim=64, time_embed_dim=128,
                          text_embed_dim=32, max_text_seq_length=8, in_channels=4, out_channels=4, patch_size=2,
                          sample_frames=2, sample_height=8, sample_width=8, temporal_compression_ratio=1)
    model = quantize_model(CogVideoXTransformer3D(cfg, dtype=jnp.float32, rngs=nnx.Rngs(3)))
    data = np.random.default_rng(0)
    latents = data.standard_normal((1, 2, 4, 8, 8)).astype(np.float32)  # 8 text + 32 video tokens
    text, negative = (data.standard_normal((1, 8, 32)).astype(np.float32) for _ in range(2))
    # float32 deltas: an fp8-cached delta can round differently in the partitioned program (XLA CPU), see parallel.py
    runtime = RuntimeConfig(mode="sixbit", tdc=True, tau_c=1e9, alpha=(1.0,) * 3, beta=(0.0,) * 3, tau_q=0.3,
                            cache_dtype="float32")
    run = lambda mesh: sample(model, text, negative, latents=latents, runtime=runtime, mesh=mesh,
                              settings=SamplerSettings(num_steps=6, guidance_scale=3.0))
    one, two = run(None), run(sequence_mesh(2))
    a, b = np.asarray(two.latents), np.asarray(one.latents)
    assert np.abs(a - b).max() / np.abs(b).max() < 1e-5, np.abs(a - b).max()
    np.testing.assert_array_equal(two.stats.route, one.stats.route)
    assert (np.asarray(one.stats.route) == SKIP).any()
    print("OK")
""")


def test_sequence_parallel_attention_and_sampling_equal_one_device_on_simulated_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-3000:]
