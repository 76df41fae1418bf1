"""Trace-time validation.

Every check raises `TypeError` (wrong dtype) or `ValueError` (wrong shape or
value) naming the argument, what it got and what was expected. Checks only look
at static information (shapes, dtypes, Python values), except
`check_labels_in_range`, which inspects label values when they are concrete.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jwxent._typing import REDUCTIONS, Array


def check_floating(x: Array, name: str) -> None:
    """Raises `TypeError` unless `x` has a floating-point dtype."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array, got dtype {x.dtype}.")


def check_integer(x: Array, name: str) -> None:
    """Raises `TypeError` unless `x` has an integer dtype."""
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"`{name}` must be an integer array of class indices, got dtype {x.dtype}.")


def check_reduction(reduction: str) -> None:
    """Raises `ValueError` for an unknown reduction, listing the valid ones."""
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"`reduction` must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}."
        )


def check_label_smoothing(label_smoothing: float) -> None:
    """Raises `ValueError` unless `0 <= label_smoothing < 1`."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"`label_smoothing` must be in [0, 1); got {label_smoothing}.")


def check_nonnegative(value: float, name: str) -> None:
    """Raises `ValueError` unless the Python number `value` is `>= 0`."""
    if not value >= 0.0:
        raise ValueError(f"`{name}` must be >= 0; got {value}.")


def check_shape(x: Array, shape: Sequence[int], name: str, expected: str) -> None:
    """Raises `ValueError` unless `x.shape == shape`; `expected` names the shape."""
    if tuple(x.shape) != tuple(shape):
        raise ValueError(
            f"`{name}` must have shape {tuple(shape)} ({expected}); got {tuple(x.shape)}."
        )


def check_broadcastable(x: Array, shape: Sequence[int], name: str) -> None:
    """Raises `ValueError` unless `x` broadcasts to `shape` without enlarging it.

    `(N,)` weights against an `(N, 1)` loss would silently broadcast to `(N, N)`;
    that is an error here, not an outer product.
    """
    shape = tuple(shape)
    try:
        broadcast = np.broadcast_shapes(tuple(x.shape), shape)
    except ValueError:
        broadcast = None
    if x.ndim > len(shape) or broadcast != shape:
        raise ValueError(
            f"`{name}` of shape {tuple(x.shape)} does not broadcast to the loss shape "
            f"{shape} without enlarging it."
        )


def check_class_weights(class_weights: Array, num_classes: int) -> None:
    """Validates `class_weights`: floating point, shape `[num_classes]`."""
    check_floating(class_weights, "class_weights")
    check_shape(class_weights, (num_classes,), "class_weights", "[num_classes]")


def check_cost_matrix(cost_matrix: Array, num_classes: int) -> None:
    """Validates `cost_matrix`: floating point, shape `[num_classes, num_classes]`."""
    check_floating(cost_matrix, "cost_matrix")
    if cost_matrix.ndim != 2 or cost_matrix.shape[0] != cost_matrix.shape[1]:
        raise ValueError(
            f"`cost_matrix` must be square, [num_classes, num_classes]; "
            f"got shape {tuple(cost_matrix.shape)}."
        )
    check_shape(
        cost_matrix,
        (num_classes, num_classes),
        "cost_matrix",
        "[num_classes, num_classes]",
    )


def concrete_value(x: Array | None) -> np.ndarray | None:
    """`x` as a NumPy array when its value is known now (eager), else None."""
    if x is None:
        return None
    try:
        return np.asarray(x)
    except jax.errors.TracerArrayConversionError:
        return None


def check_labels_in_range(labels: Array, num_classes: int, mask: Array | None) -> None:
    """In eager calls, raises `ValueError` naming the first out-of-range label.

    Labels where `mask` is False (masked or equal to `ignore_index`) are not
    checked. Under `jit` the values are unknown; the loss then returns NaN for
    such an example instead (see `docs/semantics.md`).
    """
    values, known_mask = concrete_value(labels), concrete_value(mask)
    if values is None or (mask is not None and known_mask is None):
        return
    bad = (values < 0) | (values >= num_classes)
    if known_mask is not None:
        bad &= known_mask
    if bad.any():
        position = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`labels` must be in [0, {num_classes}) (num_classes={num_classes}); "
            f"got {values[position]} at index {position}."
        )
