"""XLA:CPU forms of the softmax core's passes (selected by `_platform.by_platform`).

Each function here has the signature of the generic pass it replaces in
`_passes.py` and computes the same numbers. They exist because of how XLA:CPU
compiles row reductions; none of them helps, and some of them would hurt, on
a GPU or a TPU. What each one buys was measured with `benchmarks/` on a
2-core AMD EPYC (jax 0.10.2) and is recorded in `docs/performance.md`:

* XLA:CPU sends row reductions to a library fusion that accepts a
  bf16 → f32 `convert` inside it, but a convert with two consumers is computed
  once and written out: a float32 copy of the logits. `separate` gives each
  pass its own name for the logits (an optimisation barrier, free for an array
  that exists), and `label_logit` gathers raw bits, so that no convert is
  shared. Without them bf16 `value_and_grad` keeps a 1 GB float32 copy at
  8192 × 32000 and runs at 0.5× optax instead of 0.3×.
* `shift_and_log_sum` shifts by the label's logit instead of the row max when
  there are integer labels: one reducing pass instead of two. `Σ exp(z − z_y)`
  is at least 1, so it cannot underflow; when some logit exceeds the label's
  by more than ~88 (float32) it overflows, and a `lax.cond` then recomputes
  the batch with the max shift. Rows longer than 32768 are summed in pieces
  (the library reduction is ~4× slower per element past that).
* Every row reduction ends its library fusion (`_platform.row_result`): with
  a log, a loss's per-row arithmetic or the sum over the batch fused after
  it, the library reduction runs 4–7× slower.
* `target_dot` with a `[C]` target is a matrix-vector product, 5–6× faster
  than a row sum of `c·z` with `c` broadcast along the row.
* The backward pass forms its own target `q·c` (probability labels with class
  weights): a product shared with the forward pass is written out, a float32
  `[batch, classes]` array (1 GB at 8192 × 32000), because the library
  reduction does not take a product that another fusion also reads.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jwxent._numerics import compute_dtype, expand_rank
from jwxent._platform import row_result, vary_like
from jwxent._softmax import _passes
from jwxent._typing import Array

# The library row reduction runs ~4x slower per element on rows longer than
# about this many elements (measured: 32768 fast, 64000 slow).
_ROW_PIECE = 32768


def separate(logits: Array, stats: tuple[Any, ...]) -> tuple[Array, tuple[Any, ...]]:
    """The logits and row statistics under new names, so that a pass fuses on its own.

    `stats`, small arrays that differ from pass to pass, also keep XLA from
    merging the barriers themselves; the pass must use the returned ones, or
    XLA merges their broadcasts with another pass's and writes them out.
    """
    return lax.optimization_barrier((logits, stats))


def _row_pieces(num_classes: int) -> int:
    """The fewest equal pieces, at most 64, of at most `_ROW_PIECE` classes (else 1)."""
    for pieces in range(1, 65):
        if num_classes % pieces == 0 and num_classes // pieces <= _ROW_PIECE:
            return pieces
    return 1


def _sum_exp(z: Array, offsets: Array | None, shift: Array) -> Array:
    """`Σ_k exp(z_k + δ_k − shift)` per row, accumulated in `shift.dtype`.

    Long rows are summed as equal pieces, then the pieces; the barriers keep
    XLA from merging the two sums back into one (and from moving the convert
    in front of the reshape, which would give the library the long rows).
    """
    dtype = shift.dtype
    # Its own names for the logits and the offsets: a convert or a broadcast
    # shared with another pass would be written out.
    z, offsets, shift = lax.optimization_barrier((z, offsets, shift))
    pieces = _row_pieces(z.shape[-1])
    if pieces == 1:
        zt = _passes.adjusted(z, offsets, dtype)
        return jnp.sum(jnp.exp(zt - shift[..., None]), axis=-1)
    split = z.reshape(*z.shape[:-1], pieces, -1)
    split_offsets = None if offsets is None else offsets.reshape(pieces, -1)
    split, shift = lax.optimization_barrier((split, shift))
    zt = _passes.adjusted(split, split_offsets, dtype)
    partial = jnp.sum(jnp.exp(zt - shift[..., None, None]), axis=-1)
    return jnp.sum(lax.optimization_barrier(partial), axis=-1)


def _log_sum(z: Array, offsets: Array | None, shift: Array) -> Array:
    """`log Σ_k exp(z_k + δ_k − shift)`, the log outside the library reduction."""
    return jnp.log(row_result(_sum_exp(z, offsets, shift)))


def _max_shift(z: Array, class_mask: Array | None, offsets: Array | None) -> tuple[Array, Array]:
    dtype = compute_dtype(z.dtype)
    if class_mask is not None:
        z = jnp.where(class_mask, z, jnp.array(-jnp.inf, z.dtype))
    # Without offsets the max is exact in the logits' own dtype, and taking it
    # there leaves the sum the only reader of the converted logits.
    shifted = z if offsets is None else _passes.adjusted(z, offsets, dtype)
    shift = _passes.finite_or_zero_shift(jnp.max(shifted, axis=-1)).astype(dtype)
    return shift, _log_sum(z, offsets, shift)


def shift_and_log_sum(
    z: Array, class_mask: Array | None, offsets: Array | None, label: _passes.Label | None
) -> tuple[Array, Array]:
    """`_passes.shift_and_log_sum`, in one pass shifted by the label's logit if there is one.

    With a class mask the label's logit may be masked out; with a margin (LDAM,
    not a bar of the benchmarks) the generic form sums the margined row.
    """
    if label is not None and label.margin is not None:
        return _passes.shift_and_log_sum(z, class_mask, offsets, label)
    if label is None or class_mask is not None:
        return _max_shift(z, class_mask, offsets)
    label_shift = label.logit
    log_sum = _log_sum(z, offsets, label_shift)
    finite = jnp.all(jnp.isfinite(log_sum))
    inputs = (z, class_mask, offsets, label_shift)
    # Laid out as the generic form's rows (a reduction of `z`), whatever the labels' layout.
    label_shifted = _passes.laid_out_as_rows((label_shift, log_sum), z)
    return lax.cond(
        finite,
        lambda: vary_like(label_shifted, inputs),
        lambda: vary_like(_max_shift(z, class_mask, offsets), inputs),
    )


def lse_and_dots(
    z: Array,
    class_mask: Array | None,
    offsets: Array | None,
    label: _passes.Label | None,
    targets: tuple[tuple[Array | None, Array | None], ...],
    with_prob_dots: bool,
) -> tuple[Array, Array, tuple[Array, ...], tuple[Array, ...], tuple[Array | None, ...]]:
    """`_passes.lse_and_dots` as separate passes: the log-sum-exp, then the dots
    and the `prob_dot`s, each pass reading the logits under its own name
    (`separate`); each mass of a target with rows is a pass of its own
    (`target_mass`)."""
    shift, log_sum = shift_and_log_sum(z, class_mask, offsets, label)
    z_dots, (_, offsets_dots, shift_dots) = separate(z, (log_sum, offsets, shift))
    dots = tuple(target_dot(z_dots, offsets_dots, shift_dots, *t) for t in targets)
    masses = tuple(
        None if rows is None else target_mass(rows, classes, shift.dtype)
        for rows, classes in targets
    )
    if not with_prob_dots:
        return shift, log_sum, dots, (), masses
    z_probs, (shift_p, log_sum_p, offsets_p) = separate(z, (shift, log_sum, offsets))
    softmax = (z_probs, class_mask, offsets_p, shift_p, log_sum_p)
    return shift, log_sum, dots, tuple(prob_dot(*softmax, *t) for t in targets), masses


def target_mass(rows: Array, classes: Array | None, dtype: jnp.dtype) -> Array:
    """`Σ_k rows_k·classes_k` per row: with `[C]` classes a matrix-vector product.

    Written as a row sum of the product, XLA would share the product with the
    dots' target and write it out: a `[batch, classes]` float32 array.
    """
    rows = rows.astype(dtype)
    if classes is None:
        return row_result(jnp.sum(rows, axis=-1))
    classes = classes.astype(dtype)
    # A product over a sharded axis needs an output sharding.
    if _passes.class_axis_is_sharded(rows):
        return jnp.sum(rows * expand_rank(classes, rows.ndim), axis=-1)
    return jnp.matmul(rows, classes, precision=lax.Precision.HIGHEST)


def label_logit(z: Array, labels: Array) -> Array:
    """`_passes.label_logit`, gathered as raw bits in the logits' dtype.

    Gathering the bits keeps XLA from moving a later float32 convert in front
    of the gather, which would make the convert of all the logits shared.
    Logits already in the compute dtype have no convert to share, and are
    gathered as floats: a second derivative of the fused loss differentiates
    this forward pass, where the bits would carry no derivative.
    """
    if _passes.class_axis_is_sharded(z) or z.dtype == compute_dtype(z.dtype):
        return _passes.label_logit(z, labels)
    bits = lax.bitcast_convert_type(z, jnp.dtype(f"uint{8 * z.dtype.itemsize}"))
    return lax.bitcast_convert_type(_passes.label_logit(bits, labels), z.dtype)


def target_dot(
    z: Array, offsets: Array | None, shift: Array, rows: Array | None, classes: Array | None
) -> Array:
    """`_passes.target_sums`' dot: a plain product, clamped only where it gives NaN.

    The product (a matrix-vector product for a `[C]` target, else a row sum of
    `t·z̃`) is NaN only for `0·(−inf)` or NaN logits; only then is the clamped
    row sum computed instead. The clamp costs a division per element: the
    plain row sum of a probability target runs ~1.5× faster.
    """
    if _passes.class_axis_is_sharded(z):
        return _row_dot(z, offsets, shift, rows, classes, clamped=True)
    if rows is None and classes is not None:
        # A `[C]` target spreads over the classes (smoothing): `z·c − shift·Σc`
        # does not cancel the way a target on the top logit would.
        dtype = compute_dtype(z.dtype)
        c = classes.astype(dtype)
        fast = _matvec(z, c) - shift.astype(dtype) * jnp.sum(c)
        if offsets is not None:
            fast = fast + jnp.dot(c, offsets.astype(dtype))
    else:
        fast = _row_dot(z, offsets, shift, rows, classes, clamped=False)
    inputs = (z, offsets, shift, rows, classes)
    return lax.cond(
        jnp.any(jnp.isnan(fast)),
        lambda: vary_like(_row_dot(z, offsets, shift, rows, classes, clamped=True), inputs),
        lambda: vary_like(fast, inputs),
    )


def prob_dot(z, class_mask, offsets, shift, log_sum, rows, classes) -> Array:
    """`_passes.prob_dot`, long rows summed in pieces."""
    return _in_pieces(
        _passes.prob_dot,
        z,
        along_rows={"class_mask": class_mask, "rows": rows},
        per_class={"offsets": offsets, "classes": classes},
        per_row={"shift": shift, "log_sum": log_sum},
    )


def _row_dot(
    z: Array,
    offsets: Array | None,
    shift: Array,
    rows: Array | None,
    classes: Array | None,
    *,
    clamped: bool,
) -> Array:
    """A row sum of `t·z̃`, or with `clamped` of `t·max(z̃, floor(t))`, exact with −inf logits.

    The floor is −inf where `t > 0` (so `t·(−inf)` stays −inf) and the lowest
    finite value where `t = 0` (so `0·(−inf)` becomes 0). Only arithmetic that
    XLA:CPU fuses into its row reduction: a `where` there would be written out
    as a `[batch, classes]` array.
    """
    return _in_pieces(
        functools.partial(_row_sum, clamped=clamped),
        z,
        along_rows={"rows": rows},
        per_class={"offsets": offsets, "classes": classes},
        per_row={"shift": shift},
    )


def _in_pieces(
    row_sum: Callable[..., Array],
    z: Array,
    *,
    along_rows: dict[str, Array | None],
    per_class: dict[str, Array | None],
    per_row: dict[str, Array] | None = None,
) -> Array:
    """`row_sum(z, **along_rows, **per_class, **per_row)`, long rows as a sum of equal pieces.

    `along_rows` are `[..., C]` like `z`, `per_class` `[C]`, `per_row` `[...]`
    (None entries stay None). The barriers keep XLA from merging the two sums
    back into one (and from moving a convert in front of the reshape), as in
    `_sum_exp`.
    """
    stats = per_row or {}
    # A class axis sharded in types is not reshaped: its pieces would be resharded.
    pieces = 1 if _passes.class_axis_is_sharded(z) else _row_pieces(z.shape[-1])
    if pieces == 1:
        return row_result(row_sum(z, **along_rows, **per_class, **stats))
    split = jax.tree.map(lambda a: a.reshape(*a.shape[:-1], pieces, -1), (z, along_rows))
    split_classes = jax.tree.map(lambda a: a.reshape(pieces, -1), per_class)
    split_stats = jax.tree.map(lambda s: s[..., None], stats)
    (z, along_rows), per_class, stats = lax.optimization_barrier(
        (split, split_classes, split_stats)
    )
    partial = row_sum(z, **along_rows, **per_class, **stats)
    return jnp.sum(lax.optimization_barrier(partial), axis=-1)


def _row_sum(
    z: Array,
    offsets: Array | None,
    shift: Array,
    rows: Array | None,
    classes: Array | None,
    clamped: bool,
) -> Array:
    dtype = compute_dtype(z.dtype)
    t = _passes.target_values(rows, classes, z.ndim, dtype)
    zt = _passes.shifted(z, offsets, shift, dtype)
    if clamped:
        zt = jnp.maximum(zt, jnp.finfo(dtype).min / (1 - jnp.sign(t)))
    return jnp.sum(t * zt, axis=-1)


def _matvec(logits: Array, vector: Array) -> Array:
    """`logits @ vector` with `vector` in the compute dtype, accumulated in it.

    The library matrix product takes bf16 × bf16 → f32 but no mixed vectors,
    so a float32 vector is split into two bf16 columns (high and low parts).
    """
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
