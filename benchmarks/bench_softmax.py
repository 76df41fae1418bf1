"""Softmax cross-entropy with integer labels: jwxent against optax, a naive loss and the floor.

Every loss is class-weighted with `reduction="weighted_mean"` (PyTorch's
`F.cross_entropy(weight=...)`) and timed as `value_and_grad` and, for the
main loss, forward only:

| loss | jwxent | compared with |
| --- | --- | --- |
| `int` | `softmax_cross_entropy_with_integer_labels(class_weights=cw)` | optax's integer-label loss weighted by `cw[labels]` by hand; a naive one-hot `log_softmax` |
| `smooth` | the same with `label_smoothing=0.1` | optax's `softmax_cross_entropy` on `cw ·` smoothed one-hot targets |
| `zloss` | the same with `z_loss=1e-4` | optax's loss plus `cw[y]·1e-4·logsumexp²` by hand |
| `adjust` | the same with `logit_adjustment=log π` (Menon et al.) | optax's loss on `logits + log π` |

plus the floor of `benchmarks/floor.py` at the same shape and dtype.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jwxent
from benchmarks import bars, floor, harness, inputs
from benchmarks.shapes import Shape

LABEL_SMOOTHING = 0.1
Z_LOSS = 1e-4


def make_inputs(shape: Shape, dtype: np.dtype, seed: int = 0) -> tuple[np.ndarray, ...]:
    """`(logits, labels, class_weights, adjustment)`; logits in `dtype`, the rest float32.

    `adjustment` is `log π` for a random class prior `π`.
    """
    rng = inputs.generator(seed)
    return (
        inputs.logits(rng, shape.logits_shape, dtype),
        inputs.labels(rng, shape.batch, shape.classes),
        inputs.uniform(rng, shape.classes, 0.5, 2.0),
        inputs.log_softmax(inputs.normal(rng, (shape.classes,))),
    )


def weighted_mean(per_example: jax.Array, weight: jax.Array) -> jax.Array:
    """`Σ w·ℓ / Σ w` in float32: `reduction="weighted_mean"` written by hand."""
    return jnp.sum(weight * per_example.astype(jnp.float32)) / jnp.sum(weight)


def _jwxent(**options):
    def loss(logits, labels, cw, adjustment):
        del adjustment
        return jwxent.softmax_cross_entropy_with_integer_labels(
            logits, labels, class_weights=cw, reduction="weighted_mean", **options
        )

    return loss


def jwxent_adjusted(logits, labels, cw, adjustment):
    return jwxent.softmax_cross_entropy_with_integer_labels(
        logits, labels, class_weights=cw, logit_adjustment=adjustment, reduction="weighted_mean"
    )


def optax_int(logits, labels, cw, adjustment):
    del adjustment
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return weighted_mean(per_example, cw[labels])


def optax_smooth(logits, labels, cw, adjustment):
    del adjustment
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), LABEL_SMOOTHING)
    # The targets carry the class weights (PyTorch's smoothing with `weight=`),
    # so only the denominator is `Σ cw[y]`.
    per_example = optax.softmax_cross_entropy(logits, (targets * cw).astype(logits.dtype))
    return jnp.sum(per_example.astype(jnp.float32)) / jnp.sum(cw[labels])


def optax_zloss(logits, labels, cw, adjustment):
    del adjustment
    lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return weighted_mean(per_example.astype(jnp.float32) + Z_LOSS * lse**2, cw[labels])


def optax_adjusted(logits, labels, cw, adjustment):
    return optax_int(logits + adjustment.astype(logits.dtype), labels, cw, None)


def naive_int(logits, labels, cw, adjustment):
    """What one writes without thinking: a one-hot times `log_softmax`."""
    del adjustment
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    per_example = -jnp.sum(one_hot * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    return weighted_mean(per_example, cw[labels])


FAMILY = harness.Family(
    name="softmax",
    title="Softmax cross-entropy, integer labels",
    make_inputs=make_inputs,
    variants=(
        harness.Variant(
            "int",
            _jwxent(),
            {"optax": optax_int, "naive": naive_int},
            modes=(harness.FWD, harness.VALUE_AND_GRAD),
            bars=bars.INTEGER_LABELS,
        ),
        harness.Variant(
            "smooth",
            _jwxent(label_smoothing=LABEL_SMOOTHING),
            {"optax": optax_smooth},
            bars=bars.LABELS,
        ),
        harness.Variant("zloss", _jwxent(z_loss=Z_LOSS), {"optax": optax_zloss}, bars=bars.LABELS),
        harness.Variant(
            "adjust", jwxent_adjusted, {"optax": optax_adjusted}, bars=(bars.temp_per_row,)
        ),
    ),
    extra_cases=floor.CASES,
)
