"""Temp memory of `value_and_grad` from `compiled.memory_analysis()` (deterministic)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jwxent

BATCH, CLASSES = 512, 4096
F32_LOGITS_BYTES = BATCH * CLASSES * 4


def _temp_bytes(loss, *args):
    compiled = jax.jit(jax.value_and_grad(loss)).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def _inputs(dtype):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((BATCH, CLASSES)), dtype)
    labels = jnp.asarray(rng.integers(0, CLASSES, BATCH), jnp.int32)
    class_weights = jnp.asarray(rng.uniform(0.5, 2.0, CLASSES), jnp.float32)
    probs = jax.nn.softmax(jnp.asarray(rng.standard_normal((BATCH, CLASSES)), jnp.float32))
    return logits, labels, class_weights, probs.astype(dtype)


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
    "soft": lambda z, y, cw, q: jwxent.softmax_cross_entropy(
        z, q, class_weights=cw, reduction="weighted_mean"
    ),
}


@pytest.mark.parametrize("name", ["integer", "smoothing", "z_loss"])
def test_bf16_value_and_grad_keeps_no_float32_logits_buffer(name):
    z, y, cw, q = _inputs(jnp.bfloat16)
    temp = _temp_bytes(JWXENT_LOSSES[name], z, y, cw, q)
    assert temp < F32_LOGITS_BYTES // 4, f"{name}: {temp} bytes of temporaries"


def test_bf16_soft_labels_keep_at_most_one_float32_targets_buffer():
    """Probability labels with class weights hold the float32 targets `cw·q`, no more."""
    z, y, cw, q = _inputs(jnp.bfloat16)
    temp = _temp_bytes(JWXENT_LOSSES["soft"], z, y, cw, q)
    assert temp < 1.25 * F32_LOGITS_BYTES, f"{temp} bytes of temporaries"


def test_bf16_optax_does_keep_float32_logits():
    """The bound above can fail: optax's autodiff holds float32 logits-sized temporaries."""
    z, y, cw, _ = _inputs(jnp.bfloat16)

    def optax_loss(z):
        per_example = cw[y] * optax.softmax_cross_entropy_with_integer_labels(z, y)
        return jnp.sum(per_example) / jnp.sum(cw[y])

    with jax.numpy_dtype_promotion("standard"):
        assert _temp_bytes(optax_loss, z) >= F32_LOGITS_BYTES


def test_f32_temp_memory_is_batch_sized():
    z, y, cw, q = _inputs(jnp.float32)
    ours = _temp_bytes(lambda z: JWXENT_LOSSES["integer"](z, y, cw, q), z)
    assert ours <= 8 * BATCH * 4, f"{ours} bytes of temporaries"
