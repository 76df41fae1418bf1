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


def check_real(x: Array, name: str) -> None:
    """Raises `TypeError` unless `x` has an integer or floating-point dtype (not bool)."""
    if x.dtype == jnp.bool_ or not (
        jnp.issubdtype(x.dtype, jnp.integer) or jnp.issubdtype(x.dtype, jnp.floating)
    ):
        raise TypeError(
            f"`{name}` must be an integer or floating-point array, got dtype {x.dtype}."
        )


def check_reduction(reduction: str) -> None:
    """Raises `ValueError` for an unknown reduction, listing the valid ones."""
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"`reduction` must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}."
        )


def check_hyperparameter(
    value: object, name: str, *, minimum: float = 0.0, below: float | None = None
) -> None:
    """Validates a scalar hyperparameter that may be a Python number or a (traced) array.

    Raises `TypeError` for a non-numeric value, `ValueError` for a non-scalar
    array, and, when the value is concrete (not traced), `ValueError` unless
    `minimum <= value` (and `value < below`). Traced values are checked by
    their shape only: their range is the caller's promise.
    """
    if isinstance(value, bool) or not (
        isinstance(value, int | float | np.number | np.ndarray | jax.Array)
    ):
        raise TypeError(f"`{name}` must be a real number or a scalar array; got {type(value)}.")
    if np.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar; got shape {np.shape(value)}.")
    known = concrete_value(value)
    if known is None:
        return
    if below is None:
        if not known >= minimum:
            raise ValueError(f"`{name}` must be >= {minimum:g}; got {known}.")
    elif not minimum <= known < below:
        raise ValueError(f"`{name}` must be in [{minimum:g}, {below:g}); got {known}.")


def check_label_smoothing(label_smoothing: object) -> None:
    """`label_smoothing` is a scalar in [0, 1) (checked when concrete)."""
    check_hyperparameter(label_smoothing, "label_smoothing", below=1.0)


def check_nonnegative(value: object, name: str) -> None:
    """`value` is a scalar >= 0 (checked when concrete)."""
    check_hyperparameter(value, name)


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


def check_labels_broadcastable(
    labels: Array,
    shape: Sequence[int],
    class_axes: Sequence[int],
    name: str = "labels",
    against: str = "logits",
) -> None:
    """Raises `ValueError` unless `labels` fit `shape`, that of the logits (or `probs`).

    The `weights` rule, applied to labels: they may lack leading axes or have
    size-1 batch axes, but a shape that would make the loss larger than the
    logits (`[N]` labels against `[N, 1]` logits giving an `[N, N]` loss) is an
    error. So is a class axis of size 1 against more classes: `[N, 1]` labels
    against `[N, C]` logits would repeat one label over every class. optax
    broadcasts both; Keras and PyTorch raise (see `docs/semantics.md`).
    """
    shape, got = tuple(shape), tuple(labels.shape)
    try:
        broadcast = np.broadcast_shapes(got, shape)
    except ValueError:
        broadcast = None
    if len(got) > len(shape) or broadcast != shape:
        raise ValueError(
            f"`{name}` of shape {got} does not broadcast to the {against}' shape {shape} "
            f"without enlarging the loss."
        )
    for axis in class_axes:
        position = axis % len(shape) - len(shape)  # counted from the end, as broadcasting does
        if -position <= len(got) and got[position] == 1 and shape[position] > 1:
            raise ValueError(
                f"`{name}` of shape {got} has a class axis of size 1 against "
                f"{shape[position]} classes ({against} of shape {shape}); labels are not "
                f"broadcast over the classes."
            )


def check_class_vector(x: Array, num_classes: int, name: str) -> None:
    """Validates a per-class vector (`class_weights`, `logit_adjustment`, ...).

    It must be floating point of shape `[num_classes]`.
    """
    check_floating(x, name)
    check_shape(x, (num_classes,), name, "[num_classes]")


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


def spans_other_processes(x: Array) -> bool:
    """Whether `x` is a concrete global array with shards in other processes."""
    try:
        return not x.is_fully_addressable
    except jax.errors.ConcretizationTypeError:  # A tracer: nothing to read anyway.
        return False


def concrete_value(x: object) -> np.ndarray | None:
    """`x` as a NumPy array when its value is known here and now, else None.

    None for a tracer (under `jit`), and for a global array that spans other
    processes (`jax.distributed`): this process cannot read it, and the
    checks that need a value fall back to what they do under `jit`.
    """
    if x is None:
        return None
    if isinstance(x, jax.Array) and spans_other_processes(x):
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


def check_rank(x: Array, ndim: int, name: str, expected: str) -> None:
    """Raises `ValueError` unless `x.ndim == ndim`; `expected` names the shape."""
    if x.ndim != ndim:
        raise ValueError(f"`{name}` must be {ndim}-D ({expected}); got shape {tuple(x.shape)}.")


def check_choice(value: object, choices: Sequence[object], name: str) -> None:
    """Raises `ValueError` unless `value` is one of `choices`, listing them."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}; got {value!r}.")


def check_unit_interval(value: float, name: str) -> None:
    """Raises unless `value` is a Python real number in [0, 1).

    The value sets the math at trace time (like `label_smoothing`), so an array
    is a `TypeError`.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise TypeError(f"`{name}` must be a Python float in [0, 1); got {type(value).__name__}.")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1); got {value}.")


def check_num_classes(num_classes: int) -> None:
    """Raises unless `num_classes` is a positive Python int (it fixes a shape)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise TypeError(
            f"`num_classes` must be a Python int (it sets the output shape, so it is "
            f"static under jit); got {type(num_classes).__name__}."
        )
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1; got {num_classes}.")


def check_nonnegative_values(x: Array, name: str) -> None:
    """In eager calls, raises `ValueError` naming the first negative entry of `x`."""
    values = concrete_value(x)
    if values is None:
        return
    negative = values < 0
    if negative.any():
        position = tuple(int(i) for i in np.argwhere(negative)[0])
        raise ValueError(f"`{name}` must be >= 0; got {values[position]} at index {position}.")


def check_clip_epsilon(epsilon: object) -> None:
    """`epsilon` in [0, 0.5), so that the clip range is not empty (checked when concrete)."""
    check_hyperparameter(epsilon, "epsilon", below=0.5)
