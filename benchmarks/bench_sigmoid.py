"""Sigmoid (multi-label) losses: jwxent against optax with the same weighting.

Logits `[batch, classes]` with independent 0/1 labels in the logits' dtype
(10% positives), `reduction="mean"` over every element, timed as
`value_and_grad`, the binary cross-entropy also forward only:

* `bce`: `sigmoid_binary_cross_entropy(pos_weight=pw)` against
  `optax.sigmoid_binary_cross_entropy − (pw − 1)·y·log σ(x)`;
* `focal`: `sigmoid_focal_loss(alpha=0.25, gamma=2)` against
  `optax.sigmoid_focal_loss(alpha=0.25, gamma=2)`.

No floor and no performance bar: the sigmoid losses are elementwise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jwxent
from benchmarks import harness, inputs
from benchmarks.shapes import Shape

ALPHA = 0.25
GAMMA = 2.0
POSITIVES = 0.1


def make_inputs(shape: Shape, dtype: np.dtype, seed: int = 0) -> tuple[np.ndarray, ...]:
    """`(logits, labels, pos_weight)`: logits and 0/1 labels in `dtype`, `pos_weight: f32[C]`."""
    rng = inputs.generator(seed)
    return (
        inputs.logits(rng, shape.logits_shape, dtype),
        (rng.random(shape.logits_shape, np.float32) < POSITIVES).astype(dtype),
        inputs.uniform(rng, shape.classes, 1.0, 9.0),
    )


def jwxent_bce(logits, labels, pos_weight):
    return jwxent.sigmoid_binary_cross_entropy(
        logits, labels, pos_weight=pos_weight, reduction="mean"
    )


def jwxent_focal(logits, labels, pos_weight):
    del pos_weight
    return jwxent.sigmoid_focal_loss(logits, labels, ALPHA, GAMMA, reduction="mean")


def optax_bce(logits, labels, pos_weight):
    """optax's loss plus the extra `(pw − 1)·y·(−log σ(x))` of the positives."""
    extra = (pos_weight.astype(logits.dtype) - 1) * labels * jax.nn.log_sigmoid(logits)
    per_element = optax.sigmoid_binary_cross_entropy(logits, labels) - extra
    return jnp.mean(per_element.astype(jnp.float32))


def optax_focal(logits, labels, pos_weight):
    del pos_weight
    per_element = optax.sigmoid_focal_loss(logits, labels, alpha=ALPHA, gamma=GAMMA)
    return jnp.mean(per_element.astype(jnp.float32))


FAMILY = harness.Family(
    name="sigmoid",
    title="Sigmoid losses (multi-label)",
    make_inputs=make_inputs,
    variants=(
        harness.Variant(
            "bce", jwxent_bce, {"optax": optax_bce}, modes=(harness.FWD, harness.VALUE_AND_GRAD)
        ),
        harness.Variant("focal", jwxent_focal, {"optax": optax_focal}),
    ),
)
