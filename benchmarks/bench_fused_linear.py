"""Fused `linear_softmax_cross_entropy` against the unfused `x @ w` + optax loss.

At each `[tokens, hidden] × [hidden, vocab]` shape of `LINEAR_SHAPES` and
dtype (of `x` and `w`), the forward pass and `value_and_grad` in `(x, w)` of

* `fused`: `jwxent.linear_softmax_cross_entropy(x, w, labels, reduction="mean")`,
* `unfused`: `optax.softmax_cross_entropy_with_integer_labels(x @ w, labels).mean()`,

with XLA's `memory_analysis()` temp bytes: the performance bars are temp memory
≤ 1/8 and time ≤ 1.15× of unfused, forward+backward. The case's `loss` is
`mean` and its `impl` is `jwxent` or `unfused`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jwxent
from benchmarks import bars, harness, inputs
from benchmarks.shapes import LINEAR_SHAPES, LinearShape


def make_inputs(shape: LinearShape, dtype: np.dtype, seed: int = 0) -> tuple:
    """`((x, w), labels)`: `x` and `w` in `dtype`, `w` scaled by `1/√hidden`.

    The parameters `(x, w)` are the first argument, so `value_and_grad`
    differentiates in both.
    """
    rng = inputs.generator(seed)
    x = inputs.normal(rng, (shape.tokens, shape.hidden)).astype(dtype)
    w = inputs.normal(rng, (shape.hidden, shape.vocab), shape.hidden**-0.5).astype(dtype)
    return (x, w), inputs.labels(rng, shape.tokens, shape.vocab)


def fused(params: tuple[jax.Array, jax.Array], labels: jax.Array) -> jax.Array:
    x, w = params
    return jwxent.linear_softmax_cross_entropy(x, w, labels, reduction="mean")


def unfused(params: tuple[jax.Array, jax.Array], labels: jax.Array) -> jax.Array:
    x, w = params
    per_token = optax.softmax_cross_entropy_with_integer_labels(x @ w, labels)
    return jnp.mean(per_token.astype(jnp.float32))


FAMILY = harness.Family(
    name="fused",
    title="Fused linear + cross-entropy",
    make_inputs=make_inputs,
    variants=(
        harness.Variant(
            "mean",
            fused,
            {"unfused": unfused},
            modes=(harness.FWD, harness.VALUE_AND_GRAD),
            bars=bars.FUSED,
        ),
    ),
    reference="unfused",
    registry=LINEAR_SHAPES,
)
