"""Every public softmax loss under jit, vmap, grad∘jit, checkpoint and scan, without retracing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jwxent
from tests._tolerance import assert_close
from tests.test_softmax import make_inputs


def integer_loss(logits, labels, weights, class_weights):
    return jwxent.softmax_cross_entropy_with_integer_labels(
        logits,
        labels,
        weights=weights,
        class_weights=class_weights,
        label_smoothing=0.1,
        z_loss=1e-3,
        reduction="weighted_mean",
    )


def probability_loss(logits, probs, weights, class_weights):
    return jwxent.softmax_cross_entropy(
        logits, probs, weights=weights, class_weights=class_weights, reduction="weighted_mean"
    )


LOSSES = {"integer": (integer_loss, "labels"), "probability": (probability_loss, "probs")}


def _args(kind, batch=(3, 6), num_classes=5, seed=0):
    d = make_inputs((*batch, num_classes), seed=seed)
    _, label_key = LOSSES[kind]
    return (d["logits"], d[label_key], d["weights"], d["class_weights"])


@pytest.mark.parametrize("kind", list(LOSSES))
def test_jit_matches_eager(kind):
    loss, _ = LOSSES[kind]
    args = _args(kind)
    assert_close(jax.jit(loss)(*args), loss(*args), jnp.float32, terms=90)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_grad_of_jit_matches_eager_grad(kind):
    loss, _ = LOSSES[kind]
    args = _args(kind)
    eager = jax.grad(loss, argnums=(0, 2, 3))(*args)
    jitted = jax.grad(jax.jit(loss), argnums=(0, 2, 3))(*args)
    for a, b in zip(jitted, eager, strict=True):
        assert_close(a, b, jnp.float32, terms=90)


@pytest.mark.parametrize("kind", list(LOSSES))
@pytest.mark.parametrize("in_axes", [(0, 0, 0, None), (None, None, 0, None), (None, None, None, 0)])
def test_vmap_equals_python_loop(kind, in_axes):
    """vmap over the batch of problems, over `weights` alone and over `class_weights` alone."""
    loss, _ = LOSSES[kind]
    stacked = [_args(kind, seed=s) for s in range(3)]
    args = tuple(
        np.stack([a[i] for a in stacked]) if axis == 0 else stacked[0][i]
        for i, axis in enumerate(in_axes)
    )
    batched = jax.vmap(loss, in_axes=in_axes)(*args)
    looped = [
        loss(*(a[k] if axis == 0 else a for a, axis in zip(args, in_axes, strict=True)))
        for k in range(3)
    ]
    assert_close(batched, np.stack(looped), jnp.float32, terms=90)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_vmap_of_grad_equals_python_loop(kind):
    loss, _ = LOSSES[kind]
    stacked = [_args(kind, seed=s) for s in range(3)]
    args = tuple(np.stack(parts) for parts in zip(*stacked, strict=True))
    batched = jax.vmap(jax.grad(loss))(*args)
    looped = np.stack([jax.grad(loss)(*a) for a in stacked])
    assert_close(batched, looped, jnp.float32, terms=90)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_checkpoint_gives_same_value_and_grad(kind):
    loss, _ = LOSSES[kind]
    args = _args(kind)
    plain = jax.value_and_grad(loss)(*args)
    remat = jax.value_and_grad(jax.checkpoint(loss))(*args)
    assert_close(remat[0], plain[0], jnp.float32)
    assert_close(remat[1], plain[1], jnp.float32)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_scan_over_microbatches(kind):
    loss, _ = LOSSES[kind]
    stacked = [_args(kind, seed=s) for s in range(4)]
    args = tuple(jnp.asarray(np.stack(parts)) for parts in zip(*stacked, strict=True))

    def body(total, xs):
        value, grad = jax.value_and_grad(loss)(*xs)
        return total + value, grad

    total, grads = jax.jit(lambda a: jax.lax.scan(body, jnp.zeros(()), a))(args)
    assert_close(total, sum(loss(*a) for a in stacked), jnp.float32, terms=360)
    assert_close(grads, np.stack([jax.grad(loss)(*a) for a in stacked]), jnp.float32, 90)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_no_retrace_for_new_values_of_the_same_shape(kind):
    loss, _ = LOSSES[kind]
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(*args):
        return jax.value_and_grad(loss)(*args)

    for seed in range(3):
        value, _ = step(*_args(kind, seed=seed))
        assert np.isfinite(value)
