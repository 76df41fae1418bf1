"""Sharding in types on one device, under `Explicit` axes: masks without
`weights`, and the fused loss's gradients with no context mesh.

The mesh has one device, but the labels' type names the `"data"` axis, so
every select between a batch-sharded mask and a replicated array must be laid
out explicitly (`jnp.where` raises otherwise), and so must every loop carry
the sharded results are written into. The 8-device and multi-process tests
cover the numbers across devices; these are cheap and in-process.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jwxent
from jwxent import _platform
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


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("path", ["xla_cpu", "generic"])
@pytest.mark.parametrize("w_on_mesh", [True, False], ids=["w_on_mesh", "w_without_mesh"])
def test_fused_gradients_with_inputs_typed_on_a_mesh_and_no_context_mesh(
    w_on_mesh, path, reduction
):
    """The data-parallel call of examples/multiprocess.py: `x` and the labels
    typed on an `Explicit` mesh, `w` placed on it or not, no `jax.set_mesh`.
    The constant coefficients and the zeros the loop starts from have no mesh
    of their own; the loss lays them out on `x`'s, or the loop's updates and
    the weight-gradient product fail to type-check."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((16, 8)), rng.standard_normal((8, 12)) / 3
    y = np.arange(16) % 12
    mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,))
    placed = lambda a, spec: jax.device_put(jnp.asarray(a, jnp.float32), NamedSharding(mesh, spec))
    w_in = placed(w, P()) if w_on_mesh else jnp.asarray(w, jnp.float32)
    y_in = jax.device_put(jnp.asarray(y), NamedSharding(mesh, P("data")))
    reduce = jnp.mean if reduction == "mean" else jnp.sum

    def fused(x, w):
        return jnp.sum(jwxent.linear_softmax_cross_entropy(x, w, y_in, reduction=reduction))

    def unfused(z):
        return reduce(optax.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(y)))

    with _platform.generic_only() if path == "generic" else contextlib.nullcontext():
        value, (dx, dw) = jax.jit(jax.value_and_grad(fused, (0, 1)))(placed(x, P("data")), w_in)
    logits = jnp.asarray(x @ w, jnp.float32)
    dz = np.asarray(jax.grad(unfused)(logits), np.float64)
    np.testing.assert_allclose(value, unfused(logits), rtol=1e-5)
    np.testing.assert_allclose(dx, dz @ w.T, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dw, x.T @ dz, rtol=1e-4, atol=1e-6)
