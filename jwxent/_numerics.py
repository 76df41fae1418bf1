"""Dtype rules, broadcasting helpers and hyperparameters shared by every loss.

* The compute dtype of a loss is float64 for float64 inputs and float32 for
  everything narrower: half-precision inputs are read in their own dtype and
  converted inside each pass, never copied to float32 up front.
* A small array that broadcasts against a big one (class weights against
  logits, `pos_weight` against labels) gets leading size-1 axes, not a full
  `broadcast_to`: no replicated copy is made, and under sharding its cotangent
  is a reduction, not an all-gather.
* Hyperparameters (`label_smoothing`, `z_loss`, `gamma`, ...) are Python
  numbers or arrays, traced ones included. `is_static_zero` lets a loss skip a
  term that is exactly 0 at trace time; any other value, traced or not, takes
  the general path, so both give the same answer.
"""

import numbers

import jax.numpy as jnp
import numpy as np
from jax import lax

from jwxent import _checks
from jwxent._typing import Array, ArrayLike


def compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """float64 for float64 inputs, float32 for everything narrower."""
    wide = jnp.dtype(dtype) == jnp.float64
    return jnp.dtype(jnp.float64) if wide else jnp.dtype(jnp.float32)


def widest_float(*dtypes: jnp.dtype) -> jnp.dtype:
    """float64 if any of `dtypes` is float64, else float32."""
    wide = any(jnp.dtype(d) == jnp.float64 for d in dtypes)
    return jnp.dtype(jnp.float64) if wide else jnp.dtype(jnp.float32)


def expand_rank(x: Array, ndim: int) -> Array:
    """`x` with leading size-1 axes up to `ndim`, so that it broadcasts in a product."""
    if x.ndim >= ndim:
        return x
    return x.reshape((1,) * (ndim - x.ndim) + x.shape)


def finite_or_zero(z: Array) -> Array:
    """Replaces -inf (masked classes) by 0, so that `0·z` is 0, not NaN."""
    return jnp.where(jnp.isneginf(z), jnp.zeros_like(z), z)


def sum_present(*terms: Array | None) -> Array | None:
    """The sum of the terms that are not None (a tangent's contributions); None if none are."""
    present = [t for t in terms if t is not None]
    if not present:
        return None
    total = present[0]
    for term in present[1:]:
        total = total + term
    return total


def is_static_zero(value: ArrayLike | None) -> bool:
    """Whether `value` is None or a concrete number equal to 0 (a term to skip)."""
    if value is None:
        return True
    if isinstance(value, numbers.Number):
        return bool(value == 0)
    if isinstance(value, np.ndarray | np.generic):
        return bool(np.all(value == 0))
    return False


def is_python_number(value: object) -> bool:
    """Whether `value` is a concrete real scalar known at trace time."""
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Real) or (
        isinstance(value, np.ndarray | np.generic) and np.ndim(value) == 0
    )


def hyperparameter(value: ArrayLike, dtype: jnp.dtype) -> Array:
    """A scalar hyperparameter (Python number or array, traced or not) in `dtype`."""
    return jnp.asarray(value).astype(dtype)


def split_static(value: ArrayLike, dtype: jnp.dtype) -> tuple[float | None, Array | None]:
    """`(number, None)` for a concrete scalar, `(None, array)` for a traced one.

    A core takes the number as a static argument (a faster specialised path)
    and the array as a differentiable input; `joined` puts them back together.
    """
    if is_python_number(value):
        return float(value), None  # type: ignore[arg-type]
    return None, hyperparameter(value, dtype)


def joined(static: float | None, traced: Array | None) -> ArrayLike:
    """The hyperparameter that `split_static` split: the array if any, else the number."""
    if traced is not None:
        return traced
    return 0.0 if static is None else static


def focal_power(u: Array, gamma: ArrayLike) -> Array:
    """`u^γ` for `u` in [0, 1]: `integer_pow` for a Python integer, else a power."""
    if is_python_number(gamma):
        value = float(gamma)  # type: ignore[arg-type]
        if value == 0:
            return jnp.ones_like(u)
        if value.is_integer():
            return lax.integer_pow(u, int(value))
    return _fractional_power(u, jnp.asarray(gamma).astype(u.dtype))


def _fractional_power(u: Array, gamma: ArrayLike) -> Array:
    """`u^γ` whose derivative `γ·u^(γ−1)` is never evaluated at `u` = 0 (inf·0)."""
    positive = u > 0
    at_zero = jnp.power(jnp.zeros_like(u), gamma)  # 0, or 1 for γ = 0
    return jnp.where(positive, jnp.power(jnp.where(positive, u, 1.0), gamma), at_zero)


def class_vector(
    x: ArrayLike | None, num_classes: int, dtype: jnp.dtype, name: str
) -> Array | None:
    """`x` checked to be a floating `[num_classes]` vector, cast to `dtype` (None stays)."""
    if x is None:
        return None
    x = jnp.asarray(x)
    _checks.check_class_vector(x, num_classes, name)
    return x.astype(dtype)
