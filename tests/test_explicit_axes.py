"""Sharding in types on one device: masks without `weights` under `Explicit` axes.

The mesh has one device, but the labels' type names the `"data"` axis, so
every select between a batch-sharded mask and a replicated array must be laid
out explicitly (`jnp.where` raises otherwise). The 8-device and multi-process
tests cover the numbers across devices; this one is cheap and in-process.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import jwxent
from tests._registry import REDUCTIONS

MASKS = {"ignore_index": {"ignore_index": 3}, "where": {"where": np.arange(16) % 5 != 0}}


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fused_loss_with_a_mask_and_no_weights_under_explicit_axes(mask, reduction):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8)).astype(np.float32)
    w = rng.standard_normal((8, 12)).astype(np.float32)
    y = np.arange(16) % 12
    options = {**MASKS[mask], "reduction": reduction}
    loss = lambda x, y: jwxent.linear_softmax_cross_entropy(x, w, y, **options)
    expected = jax.jit(loss)(x, y)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(mesh):
        sharded = jax.jit(loss)(jax.device_put(x, P("data")), jax.device_put(y, P("data")))
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(expected), rtol=1e-6)
    assert jnp.all(jnp.isfinite(sharded))
