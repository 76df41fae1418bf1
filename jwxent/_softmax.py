"""Softmax cross-entropy family: a custom-VJP core and the public losses.

Every softmax loss here is a plain-JAX function of four per-example statistics
of the logits `z` (class axis last), computed by one private custom-VJP core:

* `lse = logsumexp(z)`,
* `picked = z[label]` for integer labels,
* `dot = Σ_k t_k z_k` for a target vector or matrix `t`,
* `prob_dot = Σ_k t_k softmax(z)_k` (only for the poly loss).

The core's backward pass is one fused elementwise expression,
`dz = g_lse·p + g_picked·onehot(label) + g_dot·t + g_prob·p·(t − prob_dot)`,
with `p = exp(z − lse)` recomputed from the saved logits and `lse`, so no
`[batch, classes]` probability, one-hot or float32 copy is ever stored.
Everything that is linear in the per-example loss (weights, class weights,
masks, label smoothing, z-loss, reductions) stays outside the core in plain
JAX, so autodiff gives the cotangents of those arguments for free.
"""

import functools
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
from jax import lax

from jwxent import _checks, _reduction, _weights
from jwxent._typing import Array, ArrayLike, Axis, Reduction

# ---------------------------------------------------------------------------
# The custom-VJP core.
# ---------------------------------------------------------------------------


def compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """float64 for float64 inputs, float32 for everything narrower."""
    wide = jnp.dtype(dtype) == jnp.float64
    return jnp.dtype(jnp.float64) if wide else jnp.dtype(jnp.float32)


def _rows(vector: Array, ndim: int) -> Array:
    """Reshapes a `[C]` vector to `[1, ..., 1, C]` so it broadcasts over rows."""
    if vector.ndim == ndim:
        return vector
    return vector.reshape((1,) * (ndim - 1) + vector.shape[-1:])


def _sum_to_shape(x: Array, shape: tuple[int, ...]) -> Array:
    """Sums the leading axes of `x` away so that it has `shape` (a `[C]` target)."""
    if x.shape == shape:
        return x
    return jnp.sum(x, axis=tuple(range(x.ndim - len(shape))))


def _logsumexp(z: Array, class_mask: Array | None) -> Array:
    """Row-wise log-sum-exp of `[..., C]` logits over the unmasked classes."""
    dtype = compute_dtype(z.dtype)
    if class_mask is not None:
        z = jnp.where(class_mask, z, jnp.array(-jnp.inf, z.dtype))
    # The max in the logits' own dtype is exact, and it leaves the sum the only
    # reader of `z.astype(dtype)`, so XLA fuses that convert into the sum instead
    # of writing a float32 copy of half-precision logits.
    row_max = jnp.max(z, axis=-1)
    # A row of -inf has max -inf; shift by 0 instead so the result is -inf, not NaN.
    row_max = jnp.where(jnp.isfinite(row_max), row_max, jnp.zeros_like(row_max)).astype(dtype)
    total = _sum_exp(z, row_max)
    # A no-op (`total` is >= 0 or NaN) that keeps XLA:CPU from fusing the log
    # into its library row reduction, where it makes the reduction ~4x slower.
    total = jnp.where(total >= 0, total, jnp.nan)
    return jnp.log(total) + row_max


# XLA:CPU's library row reduction runs ~4x slower per element on rows longer
# than about this many elements (measured: 32768 fast, 64000 slow).
_ROW_PIECE = 32768


def _sum_exp(z: Array, shift: Array) -> Array:
    """`Σ_k exp(z_k - shift)` per row, accumulated in `shift.dtype`.

    Rows longer than `_ROW_PIECE` are summed as a few equal pieces, then the
    pieces. The barriers keep XLA from merging the two sums back into one
    (and from moving the convert in front of the reshape, which would give
    the library reduction the long rows again).
    """
    pieces = _row_pieces(z.shape[-1])
    if pieces == 1:
        return jnp.sum(jnp.exp(z.astype(shift.dtype) - shift[..., None]), axis=-1)
    split, shift = lax.optimization_barrier((z.reshape(*z.shape[:-1], pieces, -1), shift))
    partial = jnp.sum(jnp.exp(split.astype(shift.dtype) - shift[..., None, None]), axis=-1)
    return jnp.sum(lax.optimization_barrier(partial), axis=-1)


def _row_pieces(num_classes: int) -> int:
    """The fewest equal pieces, at most 64, of at most `_ROW_PIECE` classes (else 1)."""
    for pieces in range(1, 65):
        if num_classes % pieces == 0 and num_classes // pieces <= _ROW_PIECE:
            return pieces
    return 1


def _softmax(z: Array, lse: Array, class_mask: Array | None) -> Array:
    """`exp(z - lse)` in `lse.dtype`, exactly 0 on masked classes."""
    probs = jnp.exp(z.astype(lse.dtype) - lse[..., None])
    if class_mask is None:
        return probs
    return jnp.where(class_mask, probs, 0.0)


def _label_hits(z: Array, labels: Array) -> Array:
    """Bool `[..., C]`: True at each row's label. An iota compare, not a gather."""
    # Laid out like the logits, so the compare needs no resharding.
    sharding = jax.typeof(z).sharding
    classes = lax.broadcasted_iota(labels.dtype, z.shape, z.ndim - 1, out_sharding=sharding)
    return classes == labels[..., None]


def _finite_or_zero(z: Array) -> Array:
    """Replaces -inf logits (masked classes) by 0 so that `0·(-inf)` is 0, not NaN."""
    return jnp.where(jnp.isneginf(z), jnp.zeros_like(z), z)


def _separate(logits: Array, tag: Array) -> Array:
    """The same logits under a new name, so that a pass over them fuses on its own.

    XLA merges identical `convert`s of one array (CSE); a convert that feeds two
    fusions is then written out as a float32 copy of half-precision logits. An
    optimization barrier (free for an array that already exists) gives each
    pass its own convert. `tag`, a small array that differs from pass to pass,
    keeps XLA from merging the barriers themselves.
    """
    return lax.optimization_barrier((logits, tag))[0]


@jax.custom_jvp
def _label_logit(logits: Array, labels: Array) -> Array:
    """`logits[..., label]` per row, gathered as raw bits in the logits' dtype.

    Gathering the bits keeps XLA from moving a later float32 convert in front
    of the gather, which would make the convert of all the logits shared. The
    bits carry no derivative, so the JVP (used by reverse-over-reverse, which
    differentiates the forward pass) gathers the tangent directly.
    """
    bits = lax.bitcast_convert_type(logits, jnp.dtype(f"uint{8 * logits.dtype.itemsize}"))
    return lax.bitcast_convert_type(_take_label(bits, labels), logits.dtype)


def _take_label(x: Array, labels: Array) -> Array:
    """`x[..., label]` per row: a gather, or a masked row sum over a sharded class axis.

    When the class axis is sharded in the array's type (explicit mesh axes) a
    gather cannot be placed without gathering the classes; the masked sum adds
    one value to zeros, so it is exact in any dtype, and only `[batch]` partial
    sums cross devices.
    """
    if _class_axis_is_sharded(x):
        hits = _label_hits(x, labels)
        return jnp.sum(jnp.where(hits, x, jnp.zeros_like(x)), axis=-1, dtype=x.dtype)
    index = labels[..., None].astype(jnp.int32)
    return jnp.take_along_axis(x, index, axis=-1, mode="promise_in_bounds")[..., 0]


def _class_axis_is_sharded(x: Array) -> bool:
    spec: tuple = tuple(getattr(jax.typeof(x).sharding, "spec", ()))
    return len(spec) == x.ndim and spec[-1] is not None


@_label_logit.defjvp
def _label_logit_jvp(primals, tangents):
    logits, labels = primals
    return _label_logit(logits, labels), _take_label(tangents[0], labels)


def _target_dot(logits: Array, targets: Array, dtype: jnp.dtype) -> Array:
    """`Σ_k t_k z_k` per row in `dtype`, with `0·(-inf) = 0`.

    `[..., C]` targets: `_clamped_dot`, into which XLA fuses the computation
    of the targets (a `cond` would need them written out first).

    `[C]` targets: a matrix-vector product, several times faster than a row
    sum with `t` broadcast along the row, which gives NaN for `0·(-inf)` (or
    NaN logits); only then is `_clamped_dot` computed instead.
    """
    t = targets.astype(dtype)
    if t.ndim > 1 or _class_axis_is_sharded(logits):
        return _clamped_dot(logits, t)
    fast = _matvec(logits, t)
    return lax.cond(jnp.any(jnp.isnan(fast)), lambda: _clamped_dot(logits, t), lambda: fast)


def _clamped_dot(logits: Array, targets: Array) -> Array:
    """A row sum of `t·max(z, floor(t))`, exact with -inf logits.

    The floor is -inf where `t > 0` (so `t·(-inf)` stays -inf) and the lowest
    finite value where `t = 0` (so `0·(-inf)` becomes 0). It uses only
    arithmetic that XLA:CPU fuses into its row reduction; a `where` there
    would write the product out as a `[batch, classes]` array.
    """
    dtype = targets.dtype
    floor = jnp.finfo(dtype).min / (1 - jnp.sign(targets))
    t = _rows(targets, logits.ndim)
    return jnp.sum(t * jnp.maximum(logits.astype(dtype), _rows(floor, logits.ndim)), axis=-1)


def _matvec(logits: Array, vector: Array) -> Array:
    """`logits @ vector` with `vector` in the compute dtype, accumulated in it."""
    highest = lax.Precision.HIGHEST
    if logits.dtype == vector.dtype:
        return jnp.matmul(logits, vector, precision=highest)
    high = vector.astype(logits.dtype)
    low = (vector - high.astype(vector.dtype)).astype(logits.dtype)
    parts = jnp.matmul(
        logits,
        jnp.stack([high, low], axis=-1),
        precision=highest,
        preferred_element_type=vector.dtype,
    )
    return parts[..., 0] + parts[..., 1]


def _logsumexp_by_label(logits: Array, label_logit: Array) -> Array:
    """`_logsumexp(logits, None)` in one pass over the logits instead of two.

    Shifting by the row's own label logit instead of its max needs no max pass:
    the sum of `exp(z - z_label)` is at least 1 (its label term), so it cannot
    underflow, and it only overflows when some logit exceeds the label's by
    more than ~88 (float32). Then, or with non-finite logits, the whole batch
    takes the max-shifted path.
    """
    total = _sum_exp(logits, label_logit)
    lse = jnp.log(jnp.where(total >= 0, total, jnp.nan)) + label_logit
    return lax.cond(jnp.all(jnp.isfinite(lse)), lambda: lse, lambda: _logsumexp(logits, None))


def _at_labels(x: Array, labels: Array) -> Array:
    """`x[..., label]` per row of a `[..., C]` array (or a `[1, ..., 1, C]` row)."""
    if all(size == 1 for size in x.shape[:-1]):
        return x.reshape(-1)[labels]
    return jnp.take_along_axis(x, labels[..., None], axis=-1, mode="promise_in_bounds")[..., 0]


def _explicitly_sharded(x: Array) -> bool:
    """Whether the type of `x` names mesh axes (sharding in types)."""
    spec = tuple(getattr(jax.typeof(x).sharding, "spec", ()))
    return any(axis is not None for axis in spec)


def _set_at_labels(x: Array, labels: Array, values: Array) -> Array:
    """`x` with `x[..., label] = values` in each row, by one in-place scatter."""
    rows = x.reshape(-1, x.shape[-1])
    index = jnp.arange(rows.shape[0])
    rows = rows.at[index, labels.reshape(-1)].set(values.reshape(-1), mode="promise_in_bounds")
    return rows.reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _logit_stats(
    with_prob_dot: bool,
    logits: Array,
    class_mask: Array | None,
    labels: Array | None,
    targets: Array | None,
) -> tuple[Array, Array, Array, Array]:
    """Per-row `(lse, picked, dot, prob_dot)` of `[..., C]` logits.

    Args:
      with_prob_dot: static; compute `prob_dot` (else it is zeros).
      logits: `[..., C]` floating point.
      class_mask: bool `[..., C]` of the classes in the softmax, or None for all.
        Every row must keep at least one class.
      labels: integer `[...]` within `[0, C)`, or None (then `picked` is zeros).
      targets: `[..., C]` or `[C]` floating point, or None (then `dot` is zeros).

    Returns:
      Four `[...]` arrays in the compute dtype.
    """
    return _logit_stats_fwd(with_prob_dot, logits, class_mask, labels, targets)[0]


def _logit_stats_fwd(with_prob_dot, logits, class_mask, labels, targets):
    dtype = compute_dtype(logits.dtype)
    zeros = jnp.zeros(logits.shape[:-1], dtype)
    # Each pass reads the logits in their own dtype and converts inside its
    # fusion; none of them writes a logits-shaped array.
    picked = zeros
    if labels is not None:
        picked = _label_logit(logits, labels).astype(dtype)
    if labels is not None and class_mask is None:
        lse = _logsumexp_by_label(logits, picked)
    else:
        lse = _logsumexp(logits, class_mask)
    dot = prob_dot = zeros
    if targets is not None:
        dot = _target_dot(_separate(logits, lse), targets, dtype)
        if with_prob_dot:
            t = _rows(targets.astype(dtype), logits.ndim)
            prob_dot = jnp.sum(t * _softmax(_separate(logits, dot), lse, class_mask), axis=-1)
    # Residuals: the logits we were given (no copy), the masks, labels and
    # targets, and one lse (and prob_dot) per row. Probabilities are recomputed.
    residuals = (logits, class_mask, labels, targets, lse, prob_dot)
    return (lse, picked, dot, prob_dot), residuals


def _logit_stats_bwd(with_prob_dot, residuals, cotangents):
    logits, class_mask, labels, targets, lse, prob_dot = residuals
    g_lse, g_picked, g_dot, g_prob = cotangents
    dtype = lse.dtype
    t = None if targets is None else _rows(targets.astype(dtype), logits.ndim)

    def dense(z, mask, t):
        """Every term of the gradient but the label's `g_picked·onehot(label)`."""
        probs = _softmax(z, lse, mask)
        d = g_lse[..., None] * probs
        if t is not None:
            d = d + g_dot[..., None] * t
            if with_prob_dot:
                d = d + g_prob[..., None] * probs * (t - prob_dot[..., None])
        return d, probs

    # One fused elementwise pass reads the logits and writes their gradient.
    z = _separate(logits, g_lse)
    d_logits, probs = dense(z, class_mask, t)
    if labels is not None and logits.dtype == dtype and not _explicitly_sharded(logits):
        # The label term touches one element per row: a scatter (in place)
        # after the pass is cheaper than an iota compare at every element.
        at_label = dense(
            _label_logit(logits, labels)[..., None],
            None if class_mask is None else _at_labels(class_mask, labels)[..., None],
            None if t is None else _at_labels(t, labels)[..., None],
        )[0][..., 0]
        d_logits = _set_at_labels(d_logits, labels, at_label + g_picked)
    elif labels is not None:
        # XLA:CPU computes a half-precision scatter in float32, through a
        # float32 copy of the gradient, and sharding in types cannot place the
        # scatter: there the compare stays in the fused pass.
        hits = _label_hits(z, labels)
        d_logits = d_logits + jnp.where(hits, g_picked[..., None], jnp.zeros_like(d_logits))
    d_targets = None
    if t is not None and targets is not None:
        d_t = g_dot[..., None] * _finite_or_zero(z).astype(dtype)
        if with_prob_dot:
            d_t = d_t + g_prob[..., None] * probs
        d_targets = _sum_to_shape(d_t, targets.shape).astype(targets.dtype)
    return d_logits.astype(logits.dtype), None, None, d_targets


_logit_stats.defvjp(_logit_stats_fwd, _logit_stats_bwd)


def logit_stats(
    logits: Array,
    class_mask: Array | None = None,
    *,
    labels: Array | None = None,
    targets: Array | None = None,
    with_prob_dot: bool = False,
) -> tuple[Array, Array, Array, Array]:
    """`(lse, picked, dot, prob_dot)` per row, differentiable by the custom VJP.

    The entry point of the core for every softmax-family loss; see
    `_logit_stats` for the arguments.
    """
    stats = _logit_stats(with_prob_dot, logits, class_mask, labels, targets)
    return cast(tuple[Array, Array, Array, Array], stats)


# ---------------------------------------------------------------------------
# Shared preparation: class axis last, masks, weights.
# ---------------------------------------------------------------------------


def _class_axes(axis: Axis | None, ndim: int) -> tuple[int, ...]:
    """Canonical, sorted-as-given class axes, validated against `ndim`."""
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
    return x.reshape(x.shape[: len(batch_axes)] + (-1,))


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
        return _classes_last(jnp.broadcast_to(x, self.input_shape), self.class_axes)

    def masked_inputs(self, mask: Array | None) -> tuple[Array, Array | None]:
        """Logits and class mask with the rows where `mask` is False neutralised.

        Masked rows get zero logits and all classes unmasked, so no NaN or inf
        there can reach the gradient (the double-`where` trick: replace the
        inputs, then mask the outputs in `_reduction.reduce_loss`).
        """
        z, class_mask = self.logits, self.logit_mask
        if mask is None:
            return z, class_mask
        z = jnp.where(mask[..., None], z, jnp.zeros_like(z))
        if class_mask is not None:
            class_mask = class_mask | ~mask[..., None]
        return z, class_mask


def _check_options(label_smoothing: float, z_loss: float, reduction: str) -> None:
    _checks.check_label_smoothing(label_smoothing)
    _checks.check_nonnegative(z_loss, "z_loss")
    _checks.check_reduction(reduction)


def _class_weights(class_weights: ArrayLike | None, prepared: PreparedLogits) -> Array | None:
    if class_weights is None:
        return None
    class_weights = jnp.asarray(class_weights)
    _checks.check_class_weights(class_weights, prepared.num_classes)
    return class_weights.astype(prepared.dtype)


class IntegerLabels(NamedTuple):
    """Integer labels checked, masked and made safe, with the logits to match.

    Attributes:
      prepared: the logits with the class axis last and the `where` masks.
      labels: `[*batch]` labels, 0 where masked or out of range (safe to pick).
      valid: bool `[*batch]`, False where an unmasked label is out of range
        (under `jit`; eager calls raise instead): the loss there is NaN.
      mask: bool `[*batch]` of the examples that count, or None.
      logits, class_mask: the core's inputs, masked rows neutralised.
      class_weights: `[C]` in the compute dtype, or None.
      label_weight: `class_weights[labels]`, or None.
    """

    prepared: PreparedLogits
    labels: Array
    valid: Array
    mask: Array | None
    logits: Array
    class_mask: Array | None
    class_weights: Array | None
    label_weight: Array | None


def prepare_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: Axis,
    where: ArrayLike | None,
    class_weights: ArrayLike | None,
    ignore_index: int | None,
    label_smoothing: float,
) -> IntegerLabels:
    """Validation and masking shared by every integer-label softmax loss."""
    prepared = PreparedLogits(logits, axis, where)
    labels = jnp.asarray(labels)
    _checks.check_integer(labels, "labels")
    _checks.check_shape(labels, prepared.batch_shape, "labels", "the logits' batch shape")
    if label_smoothing and prepared.logit_mask is not None:
        raise ValueError("`label_smoothing` cannot be combined with a logits-shaped `where`.")
    num_classes = prepared.num_classes
    cw = _class_weights(class_weights, prepared)
    mask = _reduction.combine_masks(
        prepared.row_mask,
        _reduction.example_mask(prepared.batch_shape, labels=labels, ignore_index=ignore_index),
    )
    _checks.check_labels_in_range(labels, num_classes, mask)
    in_range = (labels >= 0) & (labels < num_classes)
    safe_labels = jnp.where(in_range if mask is None else in_range & mask, labels, 0)
    z, class_mask = prepared.masked_inputs(mask)
    return IntegerLabels(
        prepared=prepared,
        labels=safe_labels,
        valid=in_range if mask is None else in_range | ~mask,
        mask=mask,
        logits=z,
        class_mask=class_mask,
        class_weights=cw,
        label_weight=None if cw is None else _weights.gather_class_weights(cw, safe_labels),
    )


# ---------------------------------------------------------------------------
# Integer labels.
# ---------------------------------------------------------------------------


def _integer_label_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: Axis,
    where: ArrayLike | None,
    weights: ArrayLike | None,
    class_weights: ArrayLike | None,
    cost_matrix: ArrayLike | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    reduction: Reduction,
) -> Array:
    """Implementation of `softmax_cross_entropy_with_integer_labels`."""
    _check_options(label_smoothing, z_loss, reduction)
    inputs = prepare_integer_labels(
        logits,
        labels,
        axis=axis,
        where=where,
        class_weights=class_weights,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )
    prepared, safe_labels, mask, z = inputs.prepared, inputs.labels, inputs.mask, inputs.logits
    num_classes, cw, class_mask = prepared.num_classes, inputs.class_weights, inputs.class_mask
    smoothing_targets = None
    if label_smoothing:
        smoothing_targets = cw if cw is not None else jnp.ones(num_classes, prepared.dtype)

    lse, picked, dot, _ = logit_stats(z, class_mask, labels=safe_labels, targets=smoothing_targets)
    # Out-of-range labels under jit: NaN for that example, never a clamped value.
    nll = jnp.where(inputs.valid, lse - picked, jnp.nan)
    label_weight = inputs.label_weight
    loss = _reduction.scale(nll, label_weight)
    if smoothing_targets is not None:
        smooth = lse * jnp.sum(smoothing_targets) - dot
        loss = (1.0 - label_smoothing) * loss + (label_smoothing / num_classes) * smooth
    if z_loss:
        loss = loss + _reduction.scale(z_loss * jnp.square(lse), label_weight)

    example_weight = _reduction.example_weights(weights, prepared.batch_shape, prepared.dtype)
    if cost_matrix is not None:
        cost_matrix = jnp.asarray(cost_matrix)
        _checks.check_cost_matrix(cost_matrix, num_classes)
        scores = z if class_mask is None else jnp.where(class_mask, z, -jnp.inf)
        cost = _weights.cost_matrix_weights(cost_matrix.astype(prepared.dtype), safe_labels, scores)
        example_weight = _reduction.multiply(example_weight, cost)
    return _reduction.reduce_loss(
        _reduction.scale(loss, example_weight),
        reduction,
        mask=mask,
        weight=_reduction.multiply(example_weight, label_weight),
    )


# ---------------------------------------------------------------------------
# Probability labels.
# ---------------------------------------------------------------------------


def _probability_label_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: Axis | None,
    where: ArrayLike | None,
    weights: ArrayLike | None,
    class_weights: ArrayLike | None,
    label_smoothing: float,
    z_loss: float,
    reduction: Reduction,
    poly_epsilon: ArrayLike | None = None,
) -> Array:
    """Implementation of the probability-label softmax losses.

    With `poly_epsilon`, adds the PolyLoss term `ε·Σ_k t_k·(1 − p_k)`.
    """
    _check_options(label_smoothing, z_loss, reduction)
    prepared = PreparedLogits(logits, axis, where)
    labels = jnp.asarray(labels)
    q = prepared.classes_last(labels, "labels").astype(prepared.dtype)
    if label_smoothing:
        q = (1.0 - label_smoothing) * q + label_smoothing / prepared.num_classes
    cw = _class_weights(class_weights, prepared)
    targets = q if cw is None else q * _rows(cw, q.ndim)
    if prepared.logit_mask is not None:
        targets = jnp.where(prepared.logit_mask, targets, jnp.zeros_like(targets))
    mask = prepared.row_mask
    z, class_mask = prepared.masked_inputs(mask)
    with_poly = poly_epsilon is not None
    lse, _, dot, prob_dot = logit_stats(z, class_mask, targets=targets, with_prob_dot=with_poly)
    target_mass = jnp.sum(targets, axis=-1)
    loss = lse * target_mass - dot
    if with_poly:
        loss = loss + jnp.asarray(poly_epsilon, prepared.dtype) * (target_mass - prob_dot)

    label_weight = None
    if cw is not None:
        raw = prepared.classes_last(labels, "labels").astype(prepared.dtype)
        label_weight = jnp.sum(raw * _rows(cw, raw.ndim), axis=-1)
    if z_loss:
        loss = loss + _reduction.scale(z_loss * jnp.square(lse), label_weight)
    example_weight = _reduction.example_weights(weights, prepared.batch_shape, prepared.dtype)
    return _reduction.reduce_loss(
        _reduction.scale(loss, example_weight),
        reduction,
        mask=mask,
        weight=_reduction.multiply(example_weight, label_weight),
    )


# ---------------------------------------------------------------------------
# Public losses.
# ---------------------------------------------------------------------------


def softmax_cross_entropy_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    *,
    weights: ArrayLike | None = None,
    class_weights: ArrayLike | None = None,
    cost_matrix: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: Reduction = "none",
) -> Array:
    r"""Softmax cross-entropy with integer labels and class weighting.

    A drop-in superset of `optax.softmax_cross_entropy_with_integer_labels`:
    with only optax's arguments it returns optax's values and gradients. The
    keyword-only extras give PyTorch's `F.cross_entropy(weight=, ignore_index=,
    label_smoothing=)`, TensorFlow's `weights=tf.gather(class_weights, labels)`,
    Keras's `sample_weight`, cost-sensitive weighting by the predicted label and
    PaLM's z-loss. The label's logit is picked without building a one-hot.

    Per example, with $p = \mathrm{softmax}(z)$, $c_k$ the class weights (1
    without `class_weights`), $\varepsilon$ the label smoothing and $C$ the
    number of classes:

    $$
    \ell = (1-\varepsilon)\,c_y\,(-\log p_y)
      + \frac{\varepsilon}{C}\sum_k c_k\,(-\log p_k)
      + \lambda_z\,c_y\,\bigl(\log\textstyle\sum_k e^{z_k}\bigr)^2 ,
    $$

    and the example's weight is $w = \text{weights}\cdot c_y\cdot
    M_{y,\arg\max z}$. `reduction` then combines $w\cdot\ell$ (see the
    Semantics page of the docs); the `"weighted_mean"` denominator is
    $\sum w$, as in PyTorch.

    Args:
      logits: `[*batch, num_classes]` floating-point unnormalised log
        probabilities (the class axis is `axis`).
      labels: integer `[*batch]` class indices in `[0, num_classes)`.
      axis: class axis, or a tuple of axes whose flattened size is the number
        of classes (a label is then a flat index), as in optax.
      where: bool `[*batch]` mask of the examples to include, or a
        logits-shaped mask of the classes to include (optax). Masked examples
        give exactly 0 loss and 0 gradient.
      weights: per-example multiplier broadcastable to `[*batch]` (TF
        `weights`, Keras `sample_weight`).
      class_weights: `[num_classes]`, gathered by label (PyTorch `weight=`).
      cost_matrix: `[num_classes, num_classes]`; the example is weighted by
        `cost_matrix[y, argmax(logits)]` (argmax under `stop_gradient`).
      ignore_index: examples with this label are masked (PyTorch).
      label_smoothing: $\varepsilon \in [0, 1)$, PyTorch semantics.
      z_loss: $\lambda_z \ge 0$, adds $\lambda_z\,\mathrm{lse}^2$ per example.
      reduction: `"none"`, `"sum"`, `"mean"`, `"weighted_mean"` or
        `"sum_by_nonzero_weights"`.

    Returns:
      `[*batch]` losses for `reduction="none"`, else a scalar; float32 for
      half-precision logits, the logits' dtype otherwise.

    Raises:
      TypeError: non-floating `logits`, non-integer `labels`.
      ValueError: mismatched shapes, an unknown `reduction`, `label_smoothing`
        outside [0, 1), and, in eager calls, labels out of range. Under `jit` an
        out-of-range label gives NaN for its example.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> labels = jnp.array([0, 1])
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.softmax_cross_entropy_with_integer_labels(logits, labels))
      [0.2761 2.9518]
      >>> class_weights = jnp.array([2.0, 1.0, 1.0])
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.softmax_cross_entropy_with_integer_labels(
      ...         logits, labels, class_weights=class_weights))
      [0.5523 2.9518]

    Notes:
      The gradient is a hand-written `jax.custom_vjp`: `w·(softmax(z) − target)`
      computed from the saved logits and one log-sum-exp per example.
      Reverse mode only: `jax.jvp` / `jax.jacfwd` are not supported.
    """
    return _integer_label_loss(
        logits,
        labels,
        axis=axis,
        where=where,
        weights=weights,
        class_weights=class_weights,
        cost_matrix=cost_matrix,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        reduction=reduction,
    )


def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: Axis | None = -1,
    where: ArrayLike | None = None,
    *,
    weights: ArrayLike | None = None,
    class_weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: Reduction = "none",
) -> Array:
    r"""Softmax cross-entropy with probability (or one-hot) labels.

    A drop-in superset of `optax.softmax_cross_entropy`. Class weights are
    applied inside the sum over classes, as PyTorch's `weight=` does with
    probability targets:

    $$
    \ell = -\sum_k c_k\,\tilde q_k \log p_k,\qquad
    \tilde q = (1-\varepsilon)\,q + \varepsilon / C,
    $$

    plus $\lambda_z\,w_q\,\mathrm{lse}^2$ with z-loss. The example's weight for
    the `"weighted_mean"` denominator is $\text{weights}\cdot\sum_k c_k q_k$
    (just `weights` without `class_weights`). A target of 0 on a logit of
    `-inf` contributes 0 (the `0·log 0 = 0` convention of
    `safe_softmax_cross_entropy`).

    Args:
      logits: `[*batch, num_classes]` floating point.
      labels: probabilities broadcastable to `logits.shape`.
      axis: class axis or tuple of axes (or None for all), as in optax.
      where: bool `[*batch]` example mask or logits-shaped class mask (optax).
      weights: per-example multiplier broadcastable to `[*batch]`.
      class_weights: `[num_classes]`.
      label_smoothing: $\varepsilon \in [0, 1)$.
      z_loss: $\lambda_z \ge 0$.
      reduction: one of the five reductions.

    Returns:
      `[*batch]` for `reduction="none"`, else a scalar; float32 for
      half-precision logits.

    Raises:
      TypeError: non-floating `logits`.
      ValueError: shapes that do not broadcast, bad options.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.softmax_cross_entropy(logits, labels))
      [0.2761 2.9518]

    Notes:
      Custom VJP: `dz = g·(Σ_k t_k·softmax(z) − t)` with `t = c·q̃`; the
      cotangent of `labels` is returned too. Reverse mode only.
    """
    return _probability_label_loss(
        logits,
        labels,
        axis=axis,
        where=where,
        weights=weights,
        class_weights=class_weights,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        reduction=reduction,
    )


def safe_softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: Axis | None = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    class_weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: Reduction = "none",
) -> Array:
    r"""`softmax_cross_entropy` that is finite when masked logits are `-inf`.

    A drop-in superset of `optax.safe_softmax_cross_entropy`: a label of 0 on
    a logit of `-inf` contributes $0\cdot\log 0 = 0$ to the loss and 0 to the
    gradient. jwxent's `softmax_cross_entropy` already follows this
    convention, so the two are the same function; this name exists for optax
    compatibility. See `softmax_cross_entropy` for the keywords.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> logits = jnp.array([[0.0, -jnp.inf, 0.0]])
      >>> labels = jnp.array([[0.5, 0.0, 0.5]])
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.safe_softmax_cross_entropy(logits, labels))
      [0.6931]
    """
    return softmax_cross_entropy(
        logits,
        labels,
        axis,
        where,
        weights=weights,
        class_weights=class_weights,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        reduction=reduction,
    )


def poly_loss_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    epsilon: ArrayLike = 2.0,
    *,
    axis: Axis | None = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    class_weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: Reduction = "none",
) -> Array:
    r"""PolyLoss (Poly-1) with probability labels and class weighting.

    A drop-in superset of `optax.poly_loss_cross_entropy` (Leng et al. 2022):

    $$
    \ell = -\sum_k t_k \log p_k + \epsilon \sum_k t_k (1 - p_k),
    \qquad t = c \cdot \tilde q,
    $$

    i.e. the class-weighted, smoothed cross-entropy of `softmax_cross_entropy`
    plus $\epsilon$ times the class-weighted $(1 - p_t)$ term.

    Args:
      logits: `[*batch, num_classes]` floating point.
      labels: probabilities broadcastable to `logits.shape`.
      epsilon: coefficient of the first polynomial term (2.0 for ImageNet).
      axis: class axis or tuple of axes, as in `softmax_cross_entropy`.
      where: example or class mask, as in `softmax_cross_entropy`.
      weights: per-example multiplier broadcastable to `[*batch]`.
      class_weights: `[num_classes]`, applied inside both sums.
      label_smoothing: $\varepsilon \in [0, 1)$, smooths the targets of both terms.
      z_loss: $\lambda_z \ge 0$.
      reduction: one of the five reductions.

    Returns:
      `[*batch]` for `reduction="none"`, else a scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> logits = jnp.array([[0.0, 0.0]])
      >>> labels = jnp.array([[1.0, 0.0]])
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.poly_loss_cross_entropy(logits, labels, epsilon=1.0))
      [1.1931]

    References:
      Leng et al., *PolyLoss: A Polynomial Expansion Perspective of
      Classification Loss Functions*, ICLR 2022.
    """
    return _probability_label_loss(
        logits,
        labels,
        axis=axis,
        where=where,
        weights=weights,
        class_weights=class_weights,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        reduction=reduction,
        poly_epsilon=epsilon,
    )
