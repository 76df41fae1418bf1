"""Temp memory of `value_and_grad` from `compiled.memory_analysis()` (deterministic).

These are the CPU program's bounds, compiled for the CPU on any machine (on a
GPU host too). Accelerator programs have bounds of their own (a few KiB per
row where a compiler splits a long row reduction), estimated by `python -m
benchmarks.run --target` (docs/benchmarks.md).

The shape is the registry's `"memory"` shape (512 × 4096), large enough for
XLA to pick the fusions it picks at the benchmark sizes. A float32 copy of the
logits would be `F32_LOGITS_BYTES` of temporaries.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jwxent
from benchmarks.shapes import SHAPES, select

SHAPE = SHAPES["memory"]
BATCH, CLASSES = SHAPE.logits_shape
F32_LOGITS_BYTES = BATCH * CLASSES * 4


CPU = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])


def _on_cpu(*args):
    """Each array or `ShapeDtypeStruct` as a `ShapeDtypeStruct` placed on the CPU."""
    return [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=CPU) for a in args]


def _temp_bytes(loss, *args, grad=True):
    """Temp bytes of `loss`'s `value_and_grad` (or of `loss`) compiled for the CPU."""
    fn = jax.value_and_grad(loss) if grad else loss
    stats = jax.jit(fn).trace(*_on_cpu(*args)).lower().compile().memory_analysis()
    assert stats is not None  # the CPU client always reports it
    return stats.temp_size_in_bytes


def _inputs(dtype, probs_dtype=None):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((BATCH, CLASSES)), dtype)
    labels = jnp.asarray(rng.integers(0, CLASSES, BATCH), jnp.int32)
    class_weights = jnp.asarray(rng.uniform(0.5, 2.0, CLASSES), jnp.float32)
    probs = jax.nn.softmax(jnp.asarray(rng.standard_normal((BATCH, CLASSES)), jnp.float32))
    return logits, labels, class_weights, probs.astype(probs_dtype or dtype)


JWXENT_LOSSES = {
    "integer": lambda z, y, cw, q: jwxent.softmax_cross_entropy_with_integer_labels(
        z, y, class_weights=cw, reduction="weighted_mean"
    ),
    "smoothing": lambda z, y, cw, q: jwxent.softmax_cross_entropy_with_integer_labels(
        z, y, class_weights=cw, label_smoothing=0.1, reduction="weighted_mean"
    ),
    "z_loss": lambda z, y, cw, q: jwxent.softmax_cross_entropy_with_integer_labels(
        z, y, class_weights=cw, z_loss=1e-4, reduction="weighted_mean"
    ),
    "soft": lambda z, y, cw, q: jwxent.softmax_cross_entropy(z, q, reduction="weighted_mean"),
    "soft_z_loss": lambda z, y, cw, q: jwxent.softmax_cross_entropy(
        z, q, z_loss=1e-4, reduction="weighted_mean"
    ),
    "soft_class_weights": lambda z, y, cw, q: jwxent.softmax_cross_entropy(
        z, q, class_weights=cw, reduction="weighted_mean"
    ),
    "soft_smoothing_class_weights": lambda z, y, cw, q: jwxent.softmax_cross_entropy(
        z, q, class_weights=cw, label_smoothing=0.1, reduction="weighted_mean"
    ),
}


def _optax_integer(z, y, cw, q):
    del q
    per_example = cw[y] * optax.softmax_cross_entropy_with_integer_labels(z, y)
    return jnp.sum(per_example) / jnp.sum(cw[y])


@pytest.mark.parametrize("name", list(JWXENT_LOSSES))
def test_bf16_value_and_grad_keeps_no_float32_logits_buffer(name):
    """bf16 logits (float32 probability labels): temporaries far below one float32 copy.

    With class weights this also rules out the float32 targets `cw·q`: the
    backward pass forms its own product instead of sharing the forward's.
    """
    z, y, cw, q = _inputs(jnp.bfloat16, probs_dtype=jnp.float32)
    temp = _temp_bytes(lambda z: JWXENT_LOSSES[name](z, y, cw, q), z)
    assert temp < F32_LOGITS_BYTES // 4, f"{name}: {temp} bytes of temporaries"


@pytest.mark.parametrize("name", ["soft_class_weights", "soft_smoothing_class_weights"])
def test_bf16_soft_labels_with_class_weights_are_batch_sized(name):
    """`docs/performance.md`: bf16 `value_and_grad` temporaries O(batch), at 8192 × 32000
    with float32 probability labels (compiled from shapes, never run)."""
    batch, classes = SHAPES["8192x32000"].logits_shape
    z = jax.ShapeDtypeStruct((batch, classes), jnp.bfloat16)
    q = jax.ShapeDtypeStruct((batch, classes), jnp.float32)
    cw = jax.ShapeDtypeStruct((classes,), jnp.float32)
    temp = _temp_bytes(lambda z, q, cw: JWXENT_LOSSES[name](z, None, cw, q), z, q, cw)
    assert temp <= 64 * batch, f"{name}: {temp} bytes of temporaries"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_forward_with_class_weights_keeps_no_targets_buffer(dtype):
    """The loss alone (evaluation) of probability labels with class weights, at
    8192 × 32000 (compiled from shapes, never run): `Σ_k q_k·c_k` is a
    matrix-vector product, so XLA cannot share a `q·c` product with the core's
    target dot and write it out."""
    batch, classes = SHAPES["8192x32000"].logits_shape
    z = jax.ShapeDtypeStruct((batch, classes), dtype)
    q = jax.ShapeDtypeStruct((batch, classes), jnp.float32)
    cw = jax.ShapeDtypeStruct((classes,), jnp.float32)
    loss = lambda z, q, cw: JWXENT_LOSSES["soft_class_weights"](z, None, cw, q)
    assert _temp_bytes(loss, z, q, cw, grad=False) <= 64 * batch


def test_bf16_optax_does_keep_float32_logits():
    """The bound above can fail: optax's autodiff holds float32 logits-sized temporaries."""
    z, y, cw, q = _inputs(jnp.bfloat16)
    with jax.numpy_dtype_promotion("standard"):
        assert _temp_bytes(lambda z: _optax_integer(z, y, cw, q), z) >= F32_LOGITS_BYTES


@pytest.mark.parametrize("shape", select(["full"]), ids=lambda shape: shape.name)
def test_f32_temp_memory_is_at_most_optax_and_batch_sized(shape):
    """At the benchmark shapes (compiled from shapes alone, never run).

    Both keep only per-row vectors; jwxent may keep a few more (the max-shifted
    fallback of its one-pass log-sum-exp), never a logits-sized buffer.
    """
    z = jax.ShapeDtypeStruct(shape.logits_shape, jnp.float32)
    y = jax.ShapeDtypeStruct((shape.batch,), jnp.int32)
    cw = jax.ShapeDtypeStruct((shape.classes,), jnp.float32)
    theirs = _temp_bytes(lambda z, y, cw: _optax_integer(z, y, cw, None), z, y, cw)
    for name in ("integer", "smoothing", "z_loss"):
        loss = JWXENT_LOSSES[name]
        ours = _temp_bytes(lambda z, y, cw, loss=loss: loss(z, y, cw, None), z, y, cw)
        slack = 8 * 4 * shape.batch
        assert ours <= theirs + slack, f"{name}: {ours} > optax's {theirs} bytes + 8 rows"
        assert ours <= 64 * shape.batch, f"{name}: {ours} bytes of temporaries"
