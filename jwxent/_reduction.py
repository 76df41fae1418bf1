"""The one definition of `weights`, `where`, `ignore_index` and `reduction`.

Every loss computes a batch-shaped array of weighted per-example losses
`values = w·ℓ` and a batch-shaped effective weight `w`, then calls
`reduce_loss`. Masked examples are zeroed here with `jnp.where`, so they give
exactly 0 loss and 0 gradient; the losses also replace masked inputs before
the math (the double-`where` trick) so that no NaN can leak through.

| reduction | value |
| --- | --- |
| `"none"` | `w·m·ℓ`, batch-shaped |
| `"sum"` | `Σ w·m·ℓ` |
| `"mean"` | `Σ w·m·ℓ / Σ m` |
| `"weighted_mean"` | `Σ w·m·ℓ / Σ w·m` |
| `"sum_by_nonzero_weights"` | `Σ w·m·ℓ / #{w·m ≠ 0}` |

A zero denominator gives 0 loss and 0 gradient, never NaN.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jwxent import _checks
from jwxent._typing import Array, ArrayLike, Reduction


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of the masks that are not None; None if all are None."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    combined = present[0]
    for mask in present[1:]:
        combined = combined & mask
    return combined


def example_mask(
    batch_shape: Sequence[int],
    *,
    where: ArrayLike | None = None,
    labels: Array | None = None,
    ignore_index: int | None = None,
) -> Array | None:
    """Boolean `batch_shape` mask of the examples that count, or None if all do.

    Args:
      batch_shape: the shape of the per-example loss.
      where: optional mask broadcastable to `batch_shape` (optax semantics).
      labels: integer labels of shape `batch_shape`, used with `ignore_index`.
      ignore_index: examples whose label equals it are masked (PyTorch).

    Returns:
      A bool array of shape `batch_shape`, or None when nothing is masked.
    """
    mask = None
    if where is not None:
        where = jnp.asarray(where)
        _checks.check_broadcastable(where, batch_shape, "where")
        mask = jnp.broadcast_to(where.astype(bool), tuple(batch_shape))
    if ignore_index is not None and labels is not None:
        mask = combine_masks(mask, labels != ignore_index)
    return mask


def example_weights(
    weights: ArrayLike | None, batch_shape: Sequence[int], dtype: jnp.dtype
) -> Array | None:
    """`weights` validated and broadcast to `batch_shape` in `dtype`, or None."""
    if weights is None:
        return None
    weights = jnp.asarray(weights)
    _checks.check_broadcastable(weights, batch_shape, "weights")
    return jnp.broadcast_to(weights.astype(dtype), tuple(batch_shape))


def multiply(*factors: Array | None) -> Array | None:
    """Product of the factors that are not None; None if all are None."""
    present = [f for f in factors if f is not None]
    if not present:
        return None
    product = present[0]
    for factor in present[1:]:
        product = product * factor
    return product


def scale(values: Array, factor: Array | None) -> Array:
    """`factor * values`, or `values` when `factor` is None."""
    return values if factor is None else factor * values


def safe_divide(numerator: Array, denominator: Array) -> Array:
    """`numerator / denominator`, and exactly 0 (with 0 gradient) where it is 0."""
    is_zero = denominator == 0
    safe = jnp.where(is_zero, jnp.ones_like(denominator), denominator)
    return jnp.where(is_zero, jnp.zeros_like(numerator), numerator / safe)


def reduce_loss(
    values: Array,
    reduction: Reduction,
    *,
    mask: Array | None = None,
    weight: Array | None = None,
) -> Array:
    """Masks and reduces weighted per-example losses.

    Args:
      values: `w·ℓ`, the weighted per-example losses, batch-shaped.
      reduction: one of `jwxent.Reduction`.
      mask: optional bool array of `values.shape`; False entries count nowhere.
      weight: the effective weight `w` of each example, used by the
        `"weighted_mean"` and `"sum_by_nonzero_weights"` denominators; None
        means 1 for every example.

    Returns:
      `values.shape` for `"none"`, a scalar otherwise; `values.dtype`.
    """
    _checks.check_reduction(reduction)
    if mask is not None:
        values = jnp.where(mask, values, jnp.zeros_like(values))
    if reduction == "none":
        return values
    total = jnp.sum(values)
    if reduction == "sum":
        return total
    return safe_divide(total, _denominator(values, reduction, mask, weight))


def _denominator(values: Array, reduction: str, mask: Array | None, weight: Array | None) -> Array:
    """The divisor of the mean-like reductions, in `values.dtype`.

    Every array here is made `like` the values (`ones_like`, not `ones`), so
    that it keeps their sharding under explicitly sharded meshes.
    """
    dtype = values.dtype
    if reduction == "mean":
        if mask is None:
            return jnp.asarray(values.size, dtype)
        return jnp.sum(mask, dtype=dtype)
    masked_weight = jnp.ones_like(values) if weight is None else weight.astype(dtype)
    if mask is not None:
        masked_weight = jnp.where(mask, masked_weight, jnp.zeros_like(masked_weight))
    if reduction == "weighted_mean":
        return jnp.sum(masked_weight)
    return jnp.sum(masked_weight != 0, dtype=dtype)


def finish(
    loss: Array,
    reduction: Reduction,
    *,
    weights: ArrayLike | None = None,
    mask: Array | None = None,
    label_weight: Array | None = None,
    cost: Array | None = None,
) -> Array:
    """The last step of every loss: per-example weights, then the reduction.

    Args:
      loss: the per-example loss `ℓ` (already including its label weight).
      reduction: one of `jwxent.Reduction`.
      weights: the user's per-example `weights`, broadcastable to `loss.shape`.
      mask: bool `loss.shape`, the examples that count, or None.
      label_weight: the weight the label gave the example (`class_weights[y]`,
        `Σ_k c_k q_k`), already inside `loss`, for the `"weighted_mean"` and
        `"sum_by_nonzero_weights"` denominators.
      cost: a cost-matrix weight that multiplies the example like `weights`.

    Returns:
      The reduced loss, `loss.dtype`.
    """
    _checks.check_reduction(reduction)
    if weights is not None:
        weights = jnp.asarray(weights)
        _checks.check_broadcastable(weights, loss.shape, "weights")
    return _finish(loss, reduction, weights, mask, label_weight, cost)


@functools.partial(jax.jit, static_argnums=(1,))
def _finish(loss, reduction, weights, mask, label_weight, cost) -> Array:
    """`finish` as one compiled program when called eagerly (inlined under `jit`)."""
    example_weight = multiply(example_weights(weights, loss.shape, loss.dtype), cost)
    return reduce_loss(
        scale(loss, example_weight),
        reduction,
        mask=mask,
        weight=multiply(example_weight, label_weight),
    )


def coefficients(
    reduction: Reduction,
    shape: tuple[int, ...],
    dtype: jnp.dtype,
    *,
    weights: ArrayLike | None = None,
    mask: Array | None = None,
    label_weight: Array | None = None,
) -> Array:
    """The coefficient `v` of each example in the reduced loss: `Σ v·ℓ`.

    For a loss `ℓ` that already includes its label weight,
    `finish(ℓ, reduction, ...)` is `Σ v·ℓ` for every reduction but `"none"`
    (for which `v` is the per-example weight). Losses that form their gradient
    ahead (the fused linear loss) need `v` itself.
    """
    _checks.check_reduction(reduction)
    # Ones laid out like the mask (sharded in types with the labels, say), so
    # that the select below needs no resharding.
    ones = jnp.ones(shape, dtype) if mask is None else jnp.ones_like(mask, dtype=dtype)
    weight = example_weights(weights, shape, dtype)
    weight = ones if weight is None else weight * ones
    counted = weight if mask is None else jnp.where(mask, weight, jnp.zeros_like(weight))
    if reduction in ("none", "sum"):
        return counted
    denominator = _denominator(counted, reduction, mask, multiply(weight, label_weight))
    return safe_divide(counted, denominator)
