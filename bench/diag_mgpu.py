"""Diagnose the two Mosaic GEMM GPU test failures: int8 exactness and bf16 accuracy, with numbers."""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jax, jax.numpy as jnp, numpy as np  # noqa: E402
from pallas_kernels import scaled_matmul_mgpu as S  # noqa: E402
CK = (((1,), (1,)), ((), ()))
for m, k, n in [(300, 512, 256), (512, 512, 256), (1024, 384, 256)]:
    rows = -(-m // 256) * 256
    a = jax.random.randint(jax.random.PRNGKey(1), (rows, k), -127, 128, jnp.int8)
    b = jax.random.randint(jax.random.PRNGKey(2), (n, k), -127, 128, jnp.int8)
    y = np.asarray(S.scaled_matmul(a, b, jnp.ones((rows,)), jnp.ones((n,)), m=m, out_dtype=jnp.float32))
    e = np.asarray(jax.lax.dot_general(a[:m], b, CK, preferred_element_type=jnp.int32), np.float64)
    d = np.abs(y - e)
    bad = np.argwhere(d > 0)
    print("int8", m, k, n, "shape", y.shape, "max diff", d.max(), "n bad", len(bad), "first bad", bad[:3].tolist(),
          "rows bad", np.unique(bad[:, 0])[:10].tolist() if len(bad) else [], flush=True)
for k in (64, 384):
    a = jax.random.normal(jax.random.PRNGKey(3), (1024, k), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(4), (256, k), jnp.bfloat16)
    y = np.asarray(S.scaled_matmul(a, b, jnp.ones((1024,)), jnp.ones((256,)), m=1000, out_dtype=jnp.float32))
    e = np.asarray(a[:1000], np.float64) @ np.asarray(b, np.float64).T
    x = np.asarray(jax.lax.dot_general(a[:1000], b, CK, preferred_element_type=jnp.float32,
                                       precision=jax.lax.Precision.HIGHEST), np.float64)
    print("bf16 k", k, "rel vs f64", np.linalg.norm(y - e) / np.linalg.norm(e), "xla vs f64",
          np.linalg.norm(x - e) / np.linalg.norm(e), "max abs", np.abs(y - e).max(), flush=True)
