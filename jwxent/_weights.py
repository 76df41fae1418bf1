"""Class weights: gathering by label, cost matrices, and estimation from counts."""

import jax
import jax.numpy as jnp

from jwxent._typing import Array


def gather_class_weights(class_weights: Array, labels: Array) -> Array:
    """`class_weights[labels]` without a one-hot: `tf.gather(class_weights, labels)`.

    Args:
      class_weights: `[num_classes]` floating-point weights.
      labels: integer labels of any shape, already within `[0, num_classes)`.

    Returns:
      An array of `labels.shape` and `class_weights.dtype`.
    """
    return jnp.take(class_weights, labels, axis=0, mode="clip")


def cost_matrix_weights(cost_matrix: Array, labels: Array, logits: Array) -> Array:
    """`cost_matrix[labels, argmax(logits)]`, the weight of a cost-sensitive example.

    The argmax is taken under `stop_gradient` (it is piecewise constant) and ties
    go to the first index, as in `jnp.argmax`.

    Args:
      cost_matrix: `[num_classes, num_classes]`, `M[y, k]` is the cost of
        predicting `k` when the truth is `y`.
      labels: integer labels `[*batch]` within `[0, num_classes)`.
      logits: `[*batch, num_classes]`.

    Returns:
      An array of `labels.shape` and `cost_matrix.dtype`.
    """
    predicted = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
    num_classes = cost_matrix.shape[0]
    flat_index = labels * num_classes + predicted.astype(labels.dtype)
    return jnp.take(cost_matrix.reshape(-1), flat_index, axis=0, mode="clip")
