"""The passes over the logits that the softmax core is built from, generic forms.

Each pass reads the logits in their own dtype and converts inside its fusion.
`_xla_cpu.py` has an XLA:CPU form of some of them with the same signature;
`_core.py` chooses between the two with `_platform.by_platform`.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from jwxent._numerics import compute_dtype, expand_rank
from jwxent._typing import Array

# ---------------------------------------------------------------------------
# Elementwise pieces, shared with the XLA:CPU forms.
# ---------------------------------------------------------------------------


def adjusted(z: Array, offsets: Array | None, dtype: jnp.dtype) -> Array:
    """`z + δ` in `dtype`, the `[C]` offsets broadcast along the rows."""
    z = z.astype(dtype)
    if offsets is None:
        return z
    return z + expand_rank(offsets.astype(dtype), z.ndim)


def masked(z: Array, class_mask: Array | None) -> Array:
    """`z` with the classes outside `class_mask` at −inf."""
    if class_mask is None:
        return z
    return jnp.where(class_mask, z, jnp.array(-jnp.inf, z.dtype))


def finite_or_zero_shift(row_max: Array) -> Array:
    """A row of −inf has max −inf; shift by 0 instead so the result is −inf, not NaN."""
    return jnp.where(jnp.isfinite(row_max), row_max, jnp.zeros_like(row_max))


def target_values(rows: Array | None, classes: Array | None, ndim: int, dtype: jnp.dtype) -> Array:
    """`rows · classes` in `dtype`, broadcastable against `[..., C]` (1 if both are None)."""
    parts = [expand_rank(a.astype(dtype), ndim) for a in (rows, classes) if a is not None]
    if not parts:
        return jnp.ones((1,) * ndim, dtype)
    return parts[0] if len(parts) == 1 else parts[0] * parts[1]


def class_axis_is_sharded(x: Array) -> bool:
    """Whether the type of `x` shards its last (class) axis (explicit mesh axes)."""
    spec: tuple = tuple(getattr(jax.typeof(x).sharding, "spec", ()))
    return len(spec) == x.ndim and spec[-1] is not None


def explicitly_sharded(x: Array) -> bool:
    """Whether the type of `x` names mesh axes (sharding in types)."""
    spec = tuple(getattr(jax.typeof(x).sharding, "spec", ()))
    return any(axis is not None for axis in spec)


def laid_out_as_rows(values: Any, z: Array) -> Any:
    """`[...]` arrays resharded, in types, as a reduction of `[..., C]` `z` over its classes.

    A no-op unless the types name mesh axes and the layouts differ (replicated
    logits with sharded labels, say).
    """
    if not explicitly_sharded(z) and not any(map(explicitly_sharded, jax.tree.leaves(values))):
        return values
    sharding = jax.typeof(z).sharding
    rows = jax.sharding.NamedSharding(sharding.mesh, P(*sharding.spec[:-1]))

    def reshard(x: Array) -> Array:
        return x if jax.typeof(x).sharding == rows else jax.sharding.reshard(x, rows)

    return jax.tree.map(reshard, values)


def label_hits(z: Array, labels: Array) -> Array:
    """Bool `[..., C]`: True at each row's label. An iota compare, not a one-hot."""
    if explicitly_sharded(z):
        # Laid out like the logits, so that the compare needs no resharding.
        sharding = jax.typeof(z).sharding
        classes = lax.broadcasted_iota(labels.dtype, z.shape, z.ndim - 1, out_sharding=sharding)
        return classes == labels[..., None]
    # A `[C]` iota: a loop can hoist it without writing out a `[..., C]` array.
    classes = lax.iota(labels.dtype, z.shape[-1]).reshape((1,) * (z.ndim - 1) + (-1,))
    return classes == labels[..., None]


def take_class(table: Array, labels: Array) -> Array:
    """`table[labels]` for a `[C]` table, laid out like `labels` (also sharded in types)."""
    return gather_entries(table, labels)


def gather_entries(table: Array, *indices: Array) -> Array:
    """`table[i, j, ...]` per example (indices clipped), laid out like the first index.

    Sharded in types, the gather names its output sharding. Otherwise it is a
    plain `lax.gather`: indexing (`table[labels]`) checks the table's mesh
    against the context's and fails inside `shard_map` for a table closed
    over from outside (replicated class weights, a cost matrix).
    """
    if any(map(explicitly_sharded, (table, *indices))):
        out_sharding = jax.typeof(indices[0]).sharding
        return table.at[indices].get(mode="clip", out_sharding=out_sharding)
    axes = tuple(range(len(indices)))
    numbers = lax.GatherDimensionNumbers(
        offset_dims=(), collapsed_slice_dims=axes, start_index_map=axes
    )
    points = jnp.stack([i.astype(jnp.int32) for i in indices], axis=-1)
    return lax.gather(table, points, numbers, (1,) * len(indices), mode="clip")


# ---------------------------------------------------------------------------
# The passes over the logits, generic forms.
# ---------------------------------------------------------------------------


def label_logit(z: Array, labels: Array) -> Array:
    """`z[..., label]` per row in `z`'s dtype: a gather, or a masked sum.

    When the class axis is sharded in the array's type a gather cannot be
    placed without gathering the classes; the masked sum adds one value to
    zeros, so it is exact in any dtype, and only `[batch]` partial sums cross
    devices.
    """
    if class_axis_is_sharded(z):
        hits = label_hits(z, labels)
        return jnp.sum(jnp.where(hits, z, jnp.zeros_like(z)), axis=-1, dtype=z.dtype)
    index = labels[..., None].astype(jnp.int32)
    return jnp.take_along_axis(z, index, axis=-1, mode="promise_in_bounds")[..., 0]


def label_tangent(dz: Array, labels: Array) -> Array:
    """`dz[..., label]` by a row sum against the one-hot compare (tangents are finite).

    Its transpose is a fused product with the compare; a select would need a
    zeros array, which a loop hoists and writes out.
    """
    return jnp.sum(dz * label_hits(dz, labels).astype(dz.dtype), axis=-1)


class Label(NamedTuple):
    """Each row's integer label, for the log-sum-exp pass.

    Attributes:
      labels: `[...]` integer labels within `[0, C)`.
      logit: `[...]` the label's adjusted logit `z_y + δ_y` (before its margin),
        in the compute dtype; a form may shift by it.
      margin: `[...]` the label's margin `m_y` (LDAM), or None.
    """

    labels: Array
    logit: Array
    margin: Array | None


def shift_and_log_sum(
    z: Array,
    class_mask: Array | None,
    offsets: Array | None,
    label: Label | None,
    pieces: bool = False,
) -> tuple[Array, Array]:
    """`(shift, log Σ_k exp(z̃_k − shift))` per row, shifted by the row max of `z̃`.

    `z̃ = z + δ`, and with a label margin the label's own logit is lowered by
    it inside the sum: the margined normaliser is summed directly, never
    corrected from the plain one (which would cancel when the label's
    probability rounds to 1).

    Over long rows one pass over the logits: the max and the sum of
    exponentials are reduced together (`max_and_sum_of_exp`), where a max
    pass and a sum pass would read every logit twice; `pieces`: see
    `row_pieces`.
    """
    zt = margined(masked(adjusted(z, offsets, compute_dtype(z.dtype)), class_mask), label)
    return _finished(*max_and_sum_of_exp(zt, pieces))


ONE_PASS_DOTS_CLASSES = 4096
"""The longest rows whose target dots are reduced with the log-sum-exp (`lse_and_dots`),
and whose log-sum-exp takes a max pass and a sum pass (`max_and_sum_of_exp`)."""


def lse_and_dots(
    z: Array,
    class_mask: Array | None,
    offsets: Array | None,
    label: Label | None,
    targets: tuple[tuple[Array | None, Array | None], ...],
    with_prob_dots: bool,
    pieces: bool = False,
) -> tuple[Array, Array, tuple[Array, ...], tuple[Array, ...], tuple[Array | None, ...]]:
    """`shift_and_log_sum`, and for the `(rows, classes)` targets their dots,
    `with_prob_dots` their `prob_dot`s (else an empty tuple), and their
    masses (see `target_sums`).

    Rows of at most `ONE_PASS_DOTS_CLASSES` classes, and with `pieces` the
    float32 rows that `row_pieces` cuts, without a class mask or a label
    margin, in one pass over the logits: each dot is reduced together with
    the log-sum-exp (`max_sum_and_dots`), so the logits (and a `[..., C]`
    target) are read once, as XLA:GPU reads them for optax's fused softmax.
    Otherwise the dots, masses and `prob_dot`s are a second pass
    (`target_sums`), taken with the row max as their shift: a row that
    XLA:GPU splits itself would keep a few KiB of partial sums per row for
    each of the reduction's outputs, where optax does not read such rows
    once either.
    In half precision, cut rows keep the second pass: one pass would keep the
    targets' other sums from sharing its read of them (1.10x the traffic at
    2048 x 128256 on an H100).
    """
    cut = pieces and row_pieces(z) > 1 and z.dtype == compute_dtype(z.dtype)
    one_pass = (z.shape[-1] <= ONE_PASS_DOTS_CLASSES or cut) and class_mask is None
    if one_pass and (label is None or label.margin is None) and targets:
        zt = adjusted(z, offsets, compute_dtype(z.dtype))
        values = tuple(target_values(*t, zt.ndim, zt.dtype) for t in targets)
        row_max, total, dots, exp_dots, sums = max_sum_and_dots(zt, values, with_prob_dots, pieces)
        shift, log_sum = _finished(row_max, total)
        with_rows = (rows is not None for rows, _ in targets)
        masses = tuple(s if has else None for s, has in zip(sums, with_rows, strict=True))
        return shift, log_sum, dots, tuple(q / total for q in exp_dots), masses
    shift, log_sum = shift_and_log_sum(z, class_mask, offsets, label, pieces)
    p = probabilities(z, class_mask, offsets, shift, log_sum) if with_prob_dots else None
    dots, masses, prob_dots = target_sums(z, offsets, shift, targets, p, pieces)
    return shift, log_sum, dots, prob_dots, masses


def _finished(row_max: Array, total: Array) -> tuple[Array, Array]:
    """`(shift, log_sum)` from a row's max and its sum of `exp(z − max)`."""
    # A row with no finite max sums to 0, a count or NaN: its log-sum-exp is the max.
    log_sum = jnp.where(jnp.isfinite(row_max), jnp.log(total), row_max)
    return finite_or_zero_shift(row_max), log_sum


def max_sum_and_dots(
    z: Array, targets: tuple[Array, ...], with_exp_dots: bool = False, pieces: bool = False
) -> tuple[Array, Array, tuple[Array, ...], tuple[Array, ...], tuple[Array, ...]]:
    """`max_and_sum_of_exp(z)`, `Σ_k t_k (z_k − m)` for each target `t`,
    `with_exp_dots` `Σ_k t_k exp(z_k − m)` (else an empty tuple), and each
    target's `Σ_k t_k`, in one reduction.

    A partial row carries `(m, s, q…, d…, T…)`: its max, its `Σ exp(z − m)`,
    each target's `Σ t exp(z − m)`, `Σ t (z − m)` and `Σ t`. Merged into a
    larger max `m`, the exponential sums scale by `e^{m_i − m}` and a
    partial's dot gains `T_i·(m_i − m)`: 0 where `T_i = 0` (so that `0·(−inf)
    = 0`) and where `m_i = m` (so that a target on a −inf logit reaches the
    first finite max as −inf, not NaN). A target on a row's largest logit
    stays exact: that partial's dot is 0 and its max is the row's.

    With `pieces`, a row that `row_pieces` cuts is reduced as `[..., n, C/n]`
    (a view of the row, no copy) and its `n` partials merged after.
    """
    ones, zeros = _ones_like(z), _zeros_like(z)
    # Every operand computed from `z`, with a tangent (see `_zeros_like`).
    targets = tuple(jnp.broadcast_to(t, z.shape) + zeros for t in targets)
    k, j = len(targets), len(targets) if with_exp_dots else 0
    operands = (z, ones, *targets[:j], *(zeros,) * k, *targets)
    init = (jnp.array(-jnp.inf, z.dtype), *(jnp.array(0, z.dtype),) * (1 + j + 2 * k))
    merge = functools.partial(_merge_partials, exp_sums=1 + j, dots=k)
    n = row_pieces(z) if pieces else 1
    if n > 1:
        operands = tuple(a.reshape(*a.shape[:-1], n, -1) for a in operands)
    partials = lax.reduce(operands, init, merge, (operands[0].ndim - 1,))
    if n > 1:
        # The `n` partials of a row merged in turn: elementwise, one small fusion.
        piece = lambda i: tuple(p[..., i] for p in partials)
        partials = functools.reduce(merge, map(piece, range(1, n)), piece(0))
    row_max, total, *rest = partials
    return row_max, total, tuple(rest[j : j + k]), tuple(rest[:j]), tuple(rest[j + k :])


SPLIT_ROW_CLASSES = 16384
"""XLA:GPU reduces a longer row in two kernels, with float32 partial sums between them."""
ROW_PIECES = 16


def row_pieces(z: Array) -> int:
    """How many pieces the GPU form reduces a row of `z` in: `ROW_PIECES` for
    rows longer than `SPLIT_ROW_CLASSES` that it divides into pieces no longer
    than that, else 1.

    XLA:GPU splits a reduction over more than 16384 elements itself and keeps
    its partials, about `4·√C` bytes per row for each output: 2,016 B/row of
    temp at 2048 × 128256 for the integer-label loss, 4,334 with probability
    labels and smoothing (H100 estimate). Reduced in 16 pieces, 84 and 647
    B/row, at no more traffic. 16 pieces split evenly over 2, 4, 8 or 16
    devices that shard the classes; with the class axis sharded in types the
    row stays whole (its reshape would need its layout named). Not on TPUs:
    their compiler lays the reshaped row out anew, 0.5 MB of temp per row.
    """
    classes = z.shape[-1]
    if classes <= SPLIT_ROW_CLASSES or classes % ROW_PIECES or class_axis_is_sharded(z):
        return 1
    return ROW_PIECES if classes // ROW_PIECES <= SPLIT_ROW_CLASSES else 1


def row_sums(xs: tuple[Array, ...], pieces: bool = False) -> tuple[Array, ...]:
    """`Σ` over the last axis of each of the equally shaped `xs`, in one reduction.

    One variadic reduction, so that one kernel reads what the sums share: XLA
    neither splits it nor folds one of its sums into a later sum over the
    batch, as it may with separate `jnp.sum`s. With `pieces`, a row that
    `row_pieces` cuts is reduced as `[..., n, C/n]` and its `n` partials
    summed after.
    """
    n = row_pieces(xs[0]) if pieces else 1
    if n == 1:
        return _variadic_sums(*xs)
    return _variadic_sums(*_variadic_sums(*(x.reshape(*x.shape[:-1], n, -1) for x in xs)))


@jax.custom_jvp
def _variadic_sums(*xs: Array) -> tuple[Array, ...]:
    init = tuple(jnp.zeros((), x.dtype) for x in xs)
    return tuple(lax.reduce(xs, init, _added, (xs[0].ndim - 1,)))


def _added(a: tuple[Array, ...], b: tuple[Array, ...]) -> tuple[Array, ...]:
    return tuple(x + y for x, y in zip(a, b, strict=True))


@_variadic_sums.defjvp
def _variadic_sums_jvp(primals: tuple[Array, ...], tangents: tuple[Array, ...]):
    # The plain sums' derivative: linear, so that reverse mode transposes it.
    return _variadic_sums(*primals), tuple(jnp.sum(t, axis=-1) for t in tangents)


def _merge_partials(
    a: tuple[Array, ...], b: tuple[Array, ...], *, exp_sums: int, dots: int
) -> tuple[Array, ...]:
    """Two `(m, exponential sums…, dots…, target sums…)` partials as one.

    The exponential sums of the smaller max are scaled by `e^{gap}`, `gap =
    min − max ≤ 0`, with a single `exp`; equal infinite maxima (`gap` NaN)
    scale by 1, and the caller ignores the sums of a row whose max is not
    finite. Each dot moves to the larger max (see `max_sum_and_dots`).
    """
    m1, m2 = a[0], b[0]
    row_max = jnp.maximum(m1, m2)
    gap = jnp.minimum(m1, m2) - row_max
    scale = jnp.exp(jnp.where(gap == gap, gap, jnp.zeros_like(gap)))
    first_larger = m1 >= m2
    scaled = tuple(
        jnp.where(first_larger, x1 + x2 * scale, x2 + x1 * scale)
        for x1, x2 in zip(a[1 : 1 + exp_sums], b[1 : 1 + exp_sums], strict=True)
    )

    def moved(d: Array, target_sum: Array, m: Array) -> Array:
        # No move from a max that is already the row's: `m − row_max` is NaN
        # when both are −inf (a target on a −inf logit merged with the init).
        shift = target_sum * (m - row_max)
        stays = (target_sum == 0) | (m == row_max)
        return d + jnp.where(stays, jnp.zeros_like(shift), shift)

    first = 1 + exp_sums
    d1, d2 = a[first : first + dots], b[first : first + dots]
    t1, t2 = a[first + dots :], b[first + dots :]
    moved_dots = tuple(
        moved(x1, s1, m1) + moved(x2, s2, m2) for x1, s1, x2, s2 in zip(d1, t1, d2, t2, strict=True)
    )
    target_sums = tuple(s1 + s2 for s1, s2 in zip(t1, t2, strict=True))
    return row_max, *scaled, *moved_dots, *target_sums


def max_and_sum_of_exp(z: Array, pieces: bool = False) -> tuple[Array, Array]:
    """`(m, Σ_k exp(z_k − m))` with `m = max_k z_k` per row.

    Over rows longer than `ONE_PASS_DOTS_CLASSES`, one reduction: a variadic
    reduction over `(z_k, 1)` pairs merges partial rows with the online
    log-sum-exp rule: `(m₁, s₁) ∘ (m₂, s₂) = (m, s₁·e^{m₁−m} + s₂·e^{m₂−m})`.
    The rule is associative, so XLA may reduce in any order and tree (and a
    partitioner reduces each device's columns, then merges `[rows, devices]`
    partials). The sum is only meaningful where `m` is finite.

    Short rows take a max and a sum: XLA:GPU fuses the two into one softmax
    kernel that holds the row on chip, which an H200 ran faster than the
    variadic reduction at 1000 classes (65536 × 1000 `value_and_grad`: 0.381
    against 0.454 ms in f32, 0.349 against 0.355 in bf16), while the one
    reduction was faster at 32000 and 128256 classes (bf16 at 8192 × 32000:
    0.998 against 1.062 ms). The boundary between is the target dots' own,
    not measured. `pieces`: see `row_pieces`.
    """
    if z.shape[-1] <= ONE_PASS_DOTS_CLASSES:
        row_max = jnp.max(z, axis=-1)
        shifted_z = z - finite_or_zero_shift(row_max)[..., None]
        return row_max, jnp.sum(jnp.exp(shifted_z), axis=-1)
    row_max, total, _, _, _ = max_sum_and_dots(z, (), pieces=pieces)
    return row_max, total


def _zeros_like(z: Array) -> Array:
    """Zeros computed from `z` (NaN at NaN, whose row max is NaN anyway), with a tangent.

    Computed, not constant: a constant array would be hoisted out of a loop
    over chunks and written out as a `[rows, C]` buffer. The tangent is a
    real zero, not JAX's symbolic one: a second derivative of the fused loss
    differentiates this forward pass, and JAX's derivative of a custom
    reduction fails on a symbolic-zero operand.
    """
    return 0 * jnp.clip(z, -1, 1)


def _ones_like(z: Array) -> Array:
    """Ones computed from `z`, with a tangent (see `_zeros_like`)."""
    return (z == z).astype(z.dtype) + _zeros_like(z)


def margined(zt: Array, label: Label | None) -> Array:
    """`[..., C]` adjusted logits with each row's label logit lowered by its margin."""
    if label is None or label.margin is None:
        return zt
    lowered = jnp.where(label_hits(zt, label.labels), label.margin[..., None], 0)
    return zt - lowered.astype(zt.dtype)


def shifted(z: Array, offsets: Array | None, shift: Array, dtype: jnp.dtype) -> Array:
    """`z̃ − shift` in `dtype`, `shift` per row."""
    return adjusted(z, offsets, dtype) - shift[..., None].astype(dtype)


def target_sums(
    z: Array,
    offsets: Array | None,
    shift: Array,
    targets: tuple[tuple[Array | None, Array | None], ...],
    p: Array | None = None,
    pieces: bool = False,
) -> tuple[tuple[Array, ...], tuple[Array | None, ...], tuple[Array, ...]]:
    """Per row and `(rows, classes)` target `t = rows · classes`: the dot
    `Σ_k t_k (z̃_k − shift)` (with `0·(−inf) = 0`), the mass `Σ_k t_k` where
    it has rows (else None) and, given the softmax `p`, `Σ_k t_k p_k` (else
    an empty tuple), in one reduction (`row_sums`).

    The shift is taken out inside the sum, so that `Σ_k t_k (lse − z̃_k) =
    log_sum·Σ_k t_k − dot` does not cancel when the targets sit on the
    largest logits (a one-hot row is then exactly the integer-label loss).
    A probability target's mass is the example's label weight: summed here,
    the target is read once for all three.
    """
    if not targets:
        return (), (), ()
    dtype = compute_dtype(z.dtype)
    z_shifted = shifted(z, offsets, shift, dtype)
    values = [target_values(rows, classes, z.ndim, dtype) for rows, classes in targets]
    products = [t * z_shifted for t in values]
    dots = [jnp.where(t == 0, jnp.zeros_like(x), x) for t, x in zip(values, products, strict=True)]
    with_rows = [rows is not None for rows, _ in targets]
    masses = [jnp.broadcast_to(t, z.shape) for t, has in zip(values, with_rows, strict=True) if has]
    prob_products = [] if p is None else [t * p for t in values]
    sums = iter(row_sums((*dots, *masses, *prob_products), pieces))
    dot_sums = tuple(next(sums) for _ in dots)
    mass_sums = tuple(next(sums) if has else None for has in with_rows)
    return dot_sums, mass_sums, tuple(sums)


def prob_dot(z, class_mask, offsets, shift, log_sum, rows, classes) -> Array:
    """`Σ_k t_k p_k` per row, `t = rows · classes`, `p = probabilities(z, ..., log_sum)`."""
    p = probabilities(z, class_mask, offsets, shift, log_sum)
    return jnp.sum(target_values(rows, classes, p.ndim, p.dtype) * p, axis=-1)


def separate(z: Array, stats: tuple[Any, ...]) -> tuple[Array, tuple[Any, ...]]:
    """The identity; XLA:CPU's form keeps the passes from sharing a convert."""
    return z, stats


def probabilities(z, class_mask, offsets, shift, log_sum, label: Label | None = None) -> Array:
    """`exp(z̃ − shift − log_sum)`: the softmax, 0 on masked classes.

    With a `label` margin, the label's logit is lowered by it first (LDAM).
    """
    zt = margined(masked(adjusted(z, offsets, shift.dtype), class_mask), label)
    return jnp.exp(zt - shift[..., None] - log_sum[..., None])
