"""sixbit_jax.rng draws what jax.random draws, bit for bit (it only changes how the draw is compiled)."""

import jax
import numpy as np
import pytest

from sixbit_jax import rng


@pytest.mark.parametrize("shape", [(5,), (3, 7), (2, 3, 4, 5)])
def test_flat_draws_equal_jax_random(shape):
    key = jax.random.key(np.random.default_rng().integers(1 << 30))
    np.testing.assert_array_equal(rng.normal(key, shape), jax.random.normal(key, shape))
    np.testing.assert_array_equal(rng.uniform(key, shape), jax.random.uniform(key, shape))
