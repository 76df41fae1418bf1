"""Softmax focal loss: jwxent against the focal formula written by hand in plain JAX.

optax has no multi-class focal loss, so the comparison is what a user writes:
`log_softmax` in the logits' dtype, then `−α·(1 − p)^γ·log p` (Lin et al.,
Keras `CategoricalFocalCrossentropy` with `alpha` as class weights). Both with
`gamma=2`, class weights `cw` and `reduction="weighted_mean"`, timed as
`value_and_grad`, the integer-label loss also forward only:

* `int`: `softmax_focal_loss_with_integer_labels(class_weights=cw)` against
  `Σ cw[y]·(−(1 − p_y)^γ·log p_y) / Σ cw[y]`;
* `soft`: `softmax_focal_loss(class_weights=cw)` on probability labels
  against `Σ −Σ_c cw_c·q_c·(1 − p_c)^γ·log p_c / Σ cw·q`;

plus the floor of `benchmarks/floor.py` at the same shape and dtype.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jwxent
from benchmarks import bench_softmax, floor, harness, inputs
from benchmarks.shapes import Shape

GAMMA = 2.0


def make_inputs(shape: Shape, dtype: np.dtype, seed: int = 0) -> tuple[np.ndarray, ...]:
    """`(logits, labels, probs, class_weights)`: logits in `dtype`, float32 probabilities."""
    rng = inputs.generator(seed)
    return (
        inputs.logits(rng, shape.logits_shape, dtype),
        inputs.labels(rng, shape.batch, shape.classes),
        inputs.probs(rng, shape.logits_shape),
        inputs.uniform(rng, shape.classes, 0.5, 2.0),
    )


def jwxent_int(logits, labels, probs, cw):
    del probs
    return jwxent.softmax_focal_loss_with_integer_labels(
        logits, labels, gamma=GAMMA, class_weights=cw, reduction="weighted_mean"
    )


def jwxent_soft(logits, labels, probs, cw):
    del labels
    return jwxent.softmax_focal_loss(
        logits, probs, gamma=GAMMA, class_weights=cw, reduction="weighted_mean"
    )


def _focal_terms(logits: jax.Array) -> jax.Array:
    """`−(1 − p)^γ·log p` for every class, in the logits' dtype."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -((1 - jnp.exp(log_p)) ** GAMMA) * log_p


def jnp_int(logits, labels, probs, cw):
    del probs
    per_example = jnp.take_along_axis(_focal_terms(logits), labels[:, None], axis=-1)[:, 0]
    return bench_softmax.weighted_mean(per_example, cw[labels])


def jnp_soft(logits, labels, probs, cw):
    del labels
    per_example = jnp.sum((cw * probs).astype(logits.dtype) * _focal_terms(logits), axis=-1)
    return jnp.sum(per_example.astype(jnp.float32)) / jnp.sum(probs @ cw)


FAMILY = harness.Family(
    name="focal",
    title="Softmax focal loss",
    make_inputs=make_inputs,
    variants=(
        harness.Variant(
            "int", jwxent_int, {"jnp": jnp_int}, modes=(harness.FWD, harness.VALUE_AND_GRAD)
        ),
        harness.Variant("soft", jwxent_soft, {"jnp": jnp_soft}),
    ),
    reference="jnp",
    extra_cases=floor.CASES,
)
