import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test processes on one GPU: none may take 75% of its memory up front (JAX's default).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


HAS_GPU = _has_gpu()


def _share_compilations() -> None:
    """One persistent XLA compilation cache per CPU test run, in a fresh folder that the xdist workers and the
    subprocesses the tests start inherit through the environment: many tests compile the same programs (the shipped
    model's sampler, the tiny models' steps), and a second compile becomes a disk read (the suite took 6:35 with it
    against 7:40 without, the 2-core machine otherwise idle, 2026-12-03). The first process to get here (pytest's controller) creates
    the folder and removes it at exit. GPU runs keep JAX's default (no persistent cache)."""
    if HAS_GPU:
        return
    if "SIXBIT_TEST_XLA_CACHE" not in os.environ:
        import atexit
        import shutil
        import tempfile

        os.environ["SIXBIT_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="sixbit-jax-xla-cache-")
        atexit.register(shutil.rmtree, os.environ["SIXBIT_TEST_XLA_CACHE"], ignore_errors=True)
    folder = os.environ["SIXBIT_TEST_XLA_CACHE"]
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder  # for subprocesses: jax reads it when it is imported
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


_share_compilations()


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Commands that cache their own conversions (demo, eval) write into a session folder instead of the user's
    ~/.cache; one conversion of the shipped model then serves every test."""
    os.environ["SIXBIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("sixbit-cache"))


# The longest test files, run first: with the suite split over two processes one file at a time (pytest-xdist's
# loadfile), a long file scheduled last leaves the other process idle while it finishes.
# Per-file totals on 2026-12-03 (seconds; measured with --durations=0, ~: estimated from the tests added or marked
# slow since): runtime 140, kernels ~125 (after the slow marker),
# pipeline_wan ~110, shapes_model 113, quant_linear 107, pipeline_cogvideox ~80, vae_wan ~90, shapes_train 89,
# wan_runtime 79, convert 57, model 55, vae_cogvideox 46, wan 44, parallel 34, faults 32.
LONGEST_FIRST = ("test_runtime.py", "test_kernels.py", "test_shapes_model.py", "test_pipeline_wan.py",
                 "test_quant_linear.py", "test_vae_wan.py", "test_shapes_train.py", "test_pipeline_cogvideox.py",
                 "test_wan_runtime.py", "test_convert.py", "test_model.py", "test_vae_cogvideox.py", "test_wan.py",
                 "test_parallel.py", "test_faults.py")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run the tests marked slow (each is a longer cover of a path a faster test covers too; "
                          "CI skips them)")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order
    if not config.getoption("--run-slow"):
        skip_slow = pytest.mark.skip(reason="slow; a faster test covers the same path (pytest --run-slow runs it)")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip_slow)
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a GPU (marker gpu); runs compiled on GPU runners")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: one number per comparison, robust to near-zero elements."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.isfinite(a).all(), "result has non-finite values"
    return float(np.abs(a - b).max() / np.abs(b).max())


def poison_device_memory(nbytes: int = 1 << 28) -> None:
    """Fill and free a large device buffer with 0xFF bytes (NaN as any float), so that a kernel output the
    allocator places there shows up if the kernel leaves elements unwritten. Pallas interpret mode needs no help: it
    initialises outputs to NaN (floats) or the type's minimum (integers) itself."""
    if HAS_GPU:
        import jax.numpy as jnp

        jnp.full((nbytes,), 0xFF, jnp.uint8).block_until_ready()


# Interpret mode is how kernels run on CPU; on a GPU they run compiled. (Interpret mode under XLA:GPU gave wrong NVFP4
# block scales on jax 0.11.2 while the compiled kernel and the CPU interpreter agree with the reference; it is not a
# path anyone runs, so the GPU suite tests the compiled kernels only.)
KERNEL_MODES = [
    pytest.param(True, id="interpret", marks=pytest.mark.skipif(HAS_GPU, reason="GPU runs the kernels compiled")),
    pytest.param(False, id="compiled", marks=pytest.mark.gpu),
]
# The same, with the interpreted run marked slow: for block configurations whose kernel code the default-config
# interpret tests already cover on CPU (what differs, the tiling, is what the compiled GPU run checks).
KERNEL_MODES_SLOW_INTERPRET = [
    pytest.param(True, id="interpret", marks=[pytest.mark.skipif(HAS_GPU, reason="GPU runs the kernels compiled"),
                                              pytest.mark.slow]),
    pytest.param(False, id="compiled", marks=pytest.mark.gpu),
]
