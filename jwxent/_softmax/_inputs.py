"""Input preparation shared by every softmax-family loss (plain, focal, fused).

* `PreparedLogits`: the class axes moved last and flattened, the compute
  dtype, and the masks implied by `where`.
* `prepare_integer_labels`: labels checked, masked and made safe to pick,
  with their class weights; shared by the softmax, focal and fused losses.
* `prepare_probability_labels`: probability labels in the logits' layout.
* `class_vector`: the one check and cast of `class_weights`,
  `logit_adjustment` and `label_margins`.
* `cost_weight`: the cost-matrix weight of each example.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jwxent import _checks, _reduction
from jwxent._derivatives import recomputed
from jwxent._numerics import class_vector, compute_dtype, expand_rank, is_static_zero
from jwxent._platform import end_row_reductions
from jwxent._softmax._core import Target
from jwxent._softmax._passes import (
    explicitly_sharded,
    gather_entries,
    masked,
    take_class,
)
from jwxent._typing import Array, ArrayLike, Axis


def _class_axes(axis: Axis | None, ndim: int) -> tuple[int, ...]:
    """Canonical class axes, validated against `ndim`."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, bool) or not isinstance(axis, int | tuple):
        raise TypeError(f"`axis` must be an int or a tuple of ints; got {type(axis)}.")
    axes = (axis,) if isinstance(axis, int) else axis
    canonical = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"`axis` {a} is out of bounds for logits of rank {ndim}.")
        canonical.append(a % ndim)
    return tuple(canonical)


def _classes_last(x: Array, class_axes: tuple[int, ...]) -> Array:
    """Moves `class_axes` of `x` to the end and flattens them into one axis."""
    batch_axes = tuple(a for a in range(x.ndim) if a not in class_axes)
    order = batch_axes + class_axes
    if order != tuple(range(x.ndim)):
        x = jnp.transpose(x, order)
    num_classes = 1
    for a in class_axes:
        num_classes *= x.shape[order.index(a)]
    return x.reshape(x.shape[: len(batch_axes)] + (num_classes,))


class PreparedLogits:
    """Logits with the class axis last, and the masks implied by `where`.

    Attributes:
      logits: `[*batch, C]`, the class axes moved last and flattened.
      batch_shape, num_classes, dtype: shape facts and the compute dtype.
      logit_mask: bool `[*batch, C]` for a logits-shaped `where`, else None.
      row_mask: bool `[*batch]` of the examples that count, else None.
    """

    def __init__(self, logits: ArrayLike, axis: Axis | None, where: ArrayLike | None):
        logits = jnp.asarray(logits)
        _checks.check_floating(logits, "logits")
        if logits.ndim == 0:
            raise ValueError("`logits` must have a class axis; got a scalar.")
        self.input_shape = tuple(logits.shape)
        self.class_axes = _class_axes(axis, logits.ndim)
        self.logits = _classes_last(logits, self.class_axes)
        self.batch_shape = tuple(self.logits.shape[:-1])
        self.num_classes = self.logits.shape[-1]
        self.dtype = compute_dtype(logits.dtype)
        self.logit_mask = None
        self.row_mask = None
        if where is not None:
            where = jnp.asarray(where)
            if where.ndim == logits.ndim:
                # optax: a logits-shaped `where` masks classes out of the softmax.
                self.logit_mask = self.classes_last(where.astype(bool), "where")
                self.row_mask = jnp.any(self.logit_mask, axis=-1)
            else:
                self.row_mask = _reduction.example_mask(self.batch_shape, where=where)

    def classes_last(self, x: ArrayLike, name: str) -> Array:
        """A companion of the logits' shape (probability labels) in their layout."""
        x = jnp.asarray(x)
        _checks.check_broadcastable(x, self.input_shape, name)
        if x.shape != self.input_shape:
            x = jnp.broadcast_to(x, self.input_shape)
        return _classes_last(x, self.class_axes)

    def masked_inputs(self, mask: Array | None) -> tuple[Array, Array | None]:
        """Logits and class mask with the rows where `mask` is False neutralised.

        Masked rows get zero logits and all classes unmasked, so no NaN or inf
        there can reach the gradient (the double-`where` trick: replace the
        inputs, then mask the outputs in `_reduction.reduce_loss`).
        """
        z, class_mask = self.logits, self.logit_mask
        if mask is None:
            return z, class_mask
        z = _zero_outside(z, mask, None)
        if class_mask is not None:
            class_mask = class_mask | ~mask[..., None]
        return z, class_mask

    def class_vector(self, x: ArrayLike | None, name: str) -> Array | None:
        """A `[num_classes]` keyword (`class_weights`, ...) checked, in the compute dtype."""
        return class_vector(x, self.num_classes, self.dtype, name)


@recomputed
def _zero_outside(x: Array, row_mask: Array | None, class_mask: Array | None) -> Array:
    """`x` (`[..., C]`) with the masked rows and classes replaced by 0.

    Under `jax.checkpoint` reverse mode keeps the masks as they are, not a
    masked `[batch, classes]` copy of `x` or a broadcast of the row mask.
    """
    keep = _reduction.combine_masks(class_mask, None if row_mask is None else row_mask[..., None])
    return x if keep is None else jnp.where(keep, x, jnp.zeros_like(x))


def label_margin_vector(label_margins: ArrayLike | None, prepared: PreparedLogits) -> Array | None:
    """`label_margins` checked: a margin needs the label inside the softmax."""
    if label_margins is not None and prepared.logit_mask is not None:
        raise ValueError("`label_margins` cannot be combined with a logits-shaped `where`.")
    return prepared.class_vector(label_margins, "label_margins")


class IntegerLabels(NamedTuple):
    """Integer labels checked, masked and made safe, with their class weights.

    Attributes:
      labels: `[*batch]` labels, 0 where masked or out of range (safe to pick).
      valid: bool `[*batch]`, False where an unmasked label is out of range
        (under `jit`; eager calls raise instead): the loss there is NaN.
      mask: bool `[*batch]` of the examples that count, or None.
      class_weights: `[C]` in the compute dtype, or None.
      label_weight: `class_weights[labels]`, or None.
    """

    labels: Array
    valid: Array
    mask: Array | None
    class_weights: Array | None
    label_weight: Array | None


def prepare_integer_labels(
    labels: ArrayLike,
    *,
    batch_shape: tuple[int, ...],
    num_classes: int,
    dtype: jnp.dtype,
    row_mask: Array | None,
    class_weights: ArrayLike | None,
    ignore_index: int | None,
) -> IntegerLabels:
    """Validation and masking shared by every integer-label softmax loss."""
    labels = jnp.asarray(labels)
    _checks.check_integer(labels, "labels")
    _checks.check_shape(labels, batch_shape, "labels", "the logits' batch shape")
    cw = class_vector(class_weights, num_classes, dtype, "class_weights")
    mask = _reduction.combine_masks(
        row_mask,
        _reduction.example_mask(batch_shape, labels=labels, ignore_index=ignore_index),
    )
    _checks.check_labels_in_range(labels, num_classes, mask)
    in_range = (labels >= 0) & (labels < num_classes)
    safe_labels = jnp.where(in_range if mask is None else in_range & mask, labels, 0)
    return IntegerLabels(
        labels=safe_labels,
        valid=in_range if mask is None else in_range | ~mask,
        mask=mask,
        class_weights=cw,
        label_weight=None if cw is None else take_class(cw, safe_labels),
    )


def check_smoothing_without_class_mask(
    label_smoothing: ArrayLike, prepared: PreparedLogits
) -> None:
    """Integer-label smoothing spreads mass over every class: no class mask."""
    if prepared.logit_mask is not None and not is_static_zero(label_smoothing):
        raise ValueError(
            "`label_smoothing` with integer labels cannot be combined with a logits-shaped "
            "`where`; smooth probability labels instead."
        )


def check_smoothing_has_classes(label_smoothing: ArrayLike, prepared: PreparedLogits) -> None:
    """Smoothing spreads `ε` over the classes: an empty class axis has none."""
    if prepared.num_classes == 0 and not is_static_zero(label_smoothing):
        raise ValueError("`label_smoothing` needs at least one class; the class axis is empty.")


def probability_smoothing(
    prepared: PreparedLogits, class_weights: Array | None
) -> tuple[Target, Array]:
    """The target `ε/C` of smoothed probability labels spreads over, and its sum per row.

    The classes a logits-shaped `where` masks get none (their targets are 0).
    """
    mask = prepared.logit_mask
    rows = None if mask is None else mask.astype(prepared.dtype)
    if class_weights is None:
        count = jnp.asarray(prepared.num_classes, prepared.dtype)
        total = count if rows is None else jnp.sum(rows, axis=-1)
    else:
        weights = expand_rank(class_weights, prepared.logits.ndim)
        total = jnp.sum(class_weights) if rows is None else jnp.sum(rows * weights, axis=-1)
    return Target(rows, class_weights), total


def prepare_probability_labels(
    labels: ArrayLike, prepared: PreparedLogits, mask: Array | None
) -> Array:
    """Probability labels in the logits' layout, 0 on masked rows and classes.

    They keep their own dtype (the core converts inside each pass).
    """
    _checks.check_labels_broadcastable(
        jnp.asarray(labels), prepared.input_shape, prepared.class_axes
    )
    q = prepared.classes_last(labels, "labels")
    if not jnp.issubdtype(q.dtype, jnp.floating):
        q = q.astype(prepared.dtype)
    if mask is None and prepared.logit_mask is None:
        return q
    return _zero_outside(q, mask, prepared.logit_mask)


def cost_weight(
    cost_matrix: ArrayLike | None,
    prepared: PreparedLogits,
    logits: Array,
    class_mask: Array | None,
    *,
    labels: Array | None = None,
    probabilities: Array | None = None,
) -> Array | None:
    """The cost-matrix weight of each example, `M[y, argmax z]` or `Σ_y q_y·M[y, argmax z]`.

    The argmax is taken under `stop_gradient` over the classes in the softmax
    (ties go to the first index, as in `jnp.argmax`).
    """
    if cost_matrix is None:
        return None
    cost_matrix = jnp.asarray(cost_matrix)
    _checks.check_cost_matrix(cost_matrix, prepared.num_classes)
    cost_matrix = cost_matrix.astype(prepared.dtype)
    scores = masked(jax.lax.stop_gradient(logits), class_mask)
    predicted = jnp.argmax(scores, axis=-1)
    if labels is not None:
        # Two indices, not a flat `y·C + k`, which overflows int32 past 46340 classes.
        return gather_entries(cost_matrix, labels, predicted)
    # Column `argmax` of M for each row, weighted by the row's label distribution.
    columns = _predicted_columns(cost_matrix, predicted, probabilities)
    q = probabilities.astype(prepared.dtype) if probabilities is not None else 0
    return end_row_reductions(jnp.sum(q * columns, axis=-1))


def _predicted_columns(cost_matrix: Array, predicted: Array, like: Array | None) -> Array:
    """`[..., C]` rows `M[:, predicted]`, laid out like `like` when it is sharded in types."""
    if like is not None and any(map(explicitly_sharded, (cost_matrix, predicted, like))):
        sharding = jax.typeof(like).sharding
        return cost_matrix.T.at[predicted].get(mode="clip", out_sharding=sharding)
    return jnp.take(cost_matrix.T, predicted, axis=0, mode="clip")
