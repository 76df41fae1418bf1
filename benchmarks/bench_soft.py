"""Softmax cross-entropy with probability labels: jwxent against optax with the same weighting.

The labels `q` are float32 probabilities (a softmax of random normals). Every
loss is timed as `value_and_grad`, the main one also forward only:

* `cw`: `softmax_cross_entropy(class_weights=cw, reduction="weighted_mean")`
  against `Σ optax_ce(z, cw·q) / Σ cw·q`;
* `plain`: `softmax_cross_entropy(reduction="mean")`, no class weights,
  against `mean(optax_ce(z, q))`;
* `smooth`: `cw` with `label_smoothing=0.1`, against
  `optax_ce(z, cw·smooth_labels(q))` with the same denominator;
* `zloss`: `cw` with `z_loss=1e-4`, against `cw` plus `(cw·q)·1e-4·logsumexp²`;
* `poly`: `poly_loss_cross_entropy(epsilon=2.0, reduction="mean")` against
  `mean(optax.losses.poly_loss_cross_entropy)`;

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
POLY_EPSILON = 2.0


def make_inputs(shape: Shape, dtype: np.dtype, seed: int = 0) -> tuple[np.ndarray, ...]:
    """`(logits, probs, class_weights)`: logits in `dtype`, float32 probability labels."""
    rng = inputs.generator(seed)
    return (
        inputs.logits(rng, shape.logits_shape, dtype),
        inputs.probs(rng, shape.logits_shape),
        inputs.uniform(rng, shape.classes, 0.5, 2.0),
    )


def _jwxent(**options):
    def loss(logits, probs, cw):
        return jwxent.softmax_cross_entropy(
            logits, probs, class_weights=cw, reduction="weighted_mean", **options
        )

    return loss


def jwxent_plain(logits, probs, cw):
    del cw
    return jwxent.softmax_cross_entropy(logits, probs, reduction="mean")


def jwxent_poly(logits, probs, cw):
    del cw
    return jwxent.poly_loss_cross_entropy(logits, probs, POLY_EPSILON, reduction="mean")


def _optax_weighted(logits, targets, cw, probs, extra=0.0):
    """`Σ (optax_ce(z, cw·targets) + (cw·q)·extra) / Σ cw·q` in float32."""
    per_example = optax.softmax_cross_entropy(logits, (targets * cw).astype(logits.dtype))
    weight = probs @ cw
    return jnp.sum(per_example.astype(jnp.float32) + weight * extra) / jnp.sum(weight)


def optax_cw(logits, probs, cw):
    return _optax_weighted(logits, probs, cw, probs)


def optax_plain(logits, probs, cw):
    del cw
    return jnp.mean(optax.softmax_cross_entropy(logits, probs.astype(logits.dtype)))


def optax_smooth(logits, probs, cw):
    return _optax_weighted(logits, optax.smooth_labels(probs, LABEL_SMOOTHING), cw, probs)


def optax_zloss(logits, probs, cw):
    lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    return _optax_weighted(logits, probs, cw, probs, Z_LOSS * lse**2)


def optax_poly(logits, probs, cw):
    del cw
    per_example = optax.losses.poly_loss_cross_entropy(
        logits, probs.astype(logits.dtype), epsilon=POLY_EPSILON
    )
    return jnp.mean(per_example.astype(jnp.float32))


FAMILY = harness.Family(
    name="soft",
    title="Softmax cross-entropy, probability labels",
    make_inputs=make_inputs,
    variants=(
        harness.Variant(
            "cw",
            _jwxent(),
            {"optax": optax_cw},
            modes=(harness.FWD, harness.VALUE_AND_GRAD),
            bars=bars.LABELS,
        ),
        harness.Variant("plain", jwxent_plain, {"optax": optax_plain}, bars=bars.LABELS),
        harness.Variant(
            "smooth",
            _jwxent(label_smoothing=LABEL_SMOOTHING),
            {"optax": optax_smooth},
            bars=bars.LABELS,
        ),
        harness.Variant("zloss", _jwxent(z_loss=Z_LOSS), {"optax": optax_zloss}, bars=bars.LABELS),
        harness.Variant("poly", jwxent_poly, {"optax": optax_poly}),
    ),
    extra_cases=floor.CASES,
)
