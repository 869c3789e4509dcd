"""Sequence parallelism (sixbit_jax/parallel.py) on simulated CPU devices: Ulysses attention over 4 devices equals
single-device attention (float32, 1e-5), with the XLA and the 8-bit attention; a head count that does not divide is
named. The simulated devices need XLA_FLAGS before jax starts, so the checks run in a subprocess."""

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
    from sixbit_jax.parallel import sequence_mesh, shard_tokens, ulysses_attention

    assert len(jax.devices()) == 4, jax.devices()
    mesh = sequence_mesh(4)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, (2, 64, 8, 16), jnp.float32) for key in keys)
    for implementation in ("xla", "int8"):
        want = dot_product_attention(q, k, v, implementation=implementation)
        fn = jax.jit(lambda q, k, v: ulysses_attention(q, k, v, mesh, implementation=implementation))
        got = fn(*(shard_tokens(x, mesh) for x in (q, k, v)))
        assert got.sharding.spec[1] == "seq", got.sharding  # the output stays split along the tokens
        err = float(jnp.abs(got - want).max() / jnp.abs(want).max())
        assert err < 1e-5, (implementation, err)
    try:
        ulysses_attention(q[:, :, :6], k[:, :, :6], v[:, :, :6], mesh)
        raise SystemExit("6 heads over 4 devices was accepted")
    except InputError as e:
        assert "has 6 heads" in str(e), e
    try:
        sequence_mesh(8)
        raise SystemExit("8 devices on a 4-device machine were accepted")
    except InputError as e:
        assert "has 4 cpu devices" in str(e), e
    print("OK")
""")


def test_ulysses_attention_equals_one_device_on_four_simulated_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-3000:]
