"""Class weights: counting examples per class, weights from counts, cost matrices."""

import math
from collections.abc import Callable, Hashable
from typing import Literal, get_args

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jwxent import _checks, _reduction
from jwxent._numerics import widest_float
from jwxent._typing import Array, ArrayLike

AxisName = Hashable | tuple[Hashable, ...]
"""A named mapped axis (`shard_map`, `pmap`), or several."""

# ---------------------------------------------------------------------------
# Counting examples per class.
# ---------------------------------------------------------------------------


def class_counts(
    labels: ArrayLike,
    num_classes: int,
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    axis_name: AxisName | None = None,
) -> Array:
    r"""The (weighted) number of examples of each class, as floats.

    For integer labels $y_i$ with example weights $w_i$ (1 without `weights`)
    and mask $m_i$ (`where`, `ignore_index`), and for probability labels
    $q_{i,c}$ (soft counts):

    $$
    n_c = \sum_i m_i\,w_i\,[y_i = c]
    \qquad\text{or}\qquad
    n_c = \sum_i m_i\,w_i\,q_{i,c}.
    $$

    Integer labels are counted with a scatter-add, never a one-hot, so this is
    cheap for any vocabulary size. The result feeds `class_weights_from_counts`.

    **Sharded and multi-process batches.** Under `jax.jit` with the batch
    sharded over devices (and processes, after `jax.distributed.initialize`),
    the counts are those of the whole global batch, replicated on every
    device: each device counts its own examples and one all-reduce of the
    `[num_classes]` counts sums them. This holds with `Auto` and with
    `Explicit` mesh axes (there the result's type is replicated, `P()`).
    Inside `jax.shard_map` or `jax.pmap` a function sees only its shard;
    pass the mapped axis (or axes) as `axis_name` to sum the counts over it
    with `jax.lax.psum`.

    Args:
      labels: integer class indices of any batch shape `[*batch]`, or
        floating-point probabilities `[*batch, num_classes]`.
      num_classes: number of classes $C$; a Python int (static under `jit`).
      where: bool mask broadcastable to `[*batch]`; False entries are not
        counted.
      weights: per-example multiplier broadcastable to `[*batch]` (Keras
        `sample_weight`); weighted counts as in scikit-learn's
        `compute_class_weight(..., sample_weight=)`.
      ignore_index: integer labels equal to it are not counted (PyTorch).
      axis_name: inside `jax.shard_map` or `jax.pmap`, the name (or tuple of
        names) of the mapped axes the batch is split over: the counts are
        summed over them, so every shard gets the global counts. None (the
        default) counts the examples the function sees, which under `jit` is
        the whole global batch.

    Returns:
      `[num_classes]` counts, float32 (float64 when the probability labels or
      `weights` are float64). Differentiable with respect to `weights` and
      probability `labels`.

    Raises:
      TypeError: `num_classes` not a Python int; `labels` neither integer nor
        floating point.
      ValueError: `num_classes < 1`; probability labels whose last axis is not
        `num_classes`; `where` or `weights` that do not broadcast to the batch
        shape; `ignore_index` with probability labels; in eager calls, an
        integer label outside `[0, num_classes)` that is not masked. Under
        `jit`, and for a global array with shards in other processes (which
        this process cannot read), such a label is not counted.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> labels = jnp.array([0, 2, 2, 1, 2])
      >>> print(jwxent.class_counts(labels, 4))
      [1. 1. 3. 0.]
      >>> where = jnp.array([True, True, False, True, True])
      >>> print(jwxent.class_counts(labels, 4, where=where))
      [1. 1. 2. 0.]
      >>> print(jwxent.class_counts(jnp.array([0, -100, 1, 1]), 2, ignore_index=-100))
      [1. 2.]
      >>> soft = jnp.array([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
      >>> print(jwxent.class_counts(soft, 3))
      [0.5  0.75 0.75]

      Inside `shard_map`, `axis_name` sums the shards' counts:

      >>> import jax
      >>> from jax.sharding import AxisType, PartitionSpec as P
      >>> mesh = jax.make_mesh((1,), ("batch",), axis_types=(AxisType.Auto,))
      >>> count = jax.shard_map(
      ...     lambda y: jwxent.class_counts(y, 4, axis_name="batch"),
      ...     mesh=mesh, in_specs=P("batch"), out_specs=P())
      >>> print(count(labels))
      [1. 1. 3. 0.]
    """
    counts = _local_counts(labels, num_classes, where, weights, ignore_index)
    return counts if axis_name is None else jax.lax.psum(counts, axis_name)


def _local_counts(
    labels: ArrayLike,
    num_classes: int,
    where: ArrayLike | None,
    weights: ArrayLike | None,
    ignore_index: int | None,
) -> Array:
    """`class_counts` of the examples this function sees (no collective over named axes)."""
    _checks.check_num_classes(num_classes)
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.floating):
        return _soft_counts(labels, num_classes, where, weights, ignore_index)
    _checks.check_integer(labels, "labels")
    mask = _reduction.example_mask(
        labels.shape, where=where, labels=labels, ignore_index=ignore_index
    )
    if not _checks.spans_other_processes(labels):
        # A global array of several processes cannot be read here: like
        # under jit, its out-of-range labels are then not counted.
        _checks.check_labels_in_range(labels, num_classes, mask)
    layout = _explicit_sharding(labels)
    weight = _masked_example_weights(weights, mask, labels.shape, widest_float(), layout)
    return _scatter_counts(weight, labels, num_classes)


def _scatter_counts(weight: Array, labels: Array, num_classes: int) -> Array:
    """`[num_classes]` sums of `weight` `[*batch]` by integer `labels` `[*batch]`.

    One scatter-add (no one-hot, no reshape of the batch). Labels outside
    `[0, num_classes)` are dropped, negative ones included: out-of-range
    labels under jit are not counted (`jnp.bincount` would clip negatives
    into class 0). With `Explicit` mesh axes the output sharding of a scatter
    with sharded indices must be named: the counts are replicated, which XLA
    compiles as a local scatter and one all-reduce of `[num_classes]`.
    """
    zeros = jnp.zeros((num_classes,), weight.dtype)
    return zeros.at[labels].add(
        weight,
        mode="drop",
        wrap_negative_indices=False,
        out_sharding=_replicated_if_explicit(labels, weight),
    )


def _replicated_if_explicit(*arrays: Array) -> NamedSharding | None:
    """A replicated sharding on the arrays' mesh if it has `Explicit` axes, else None."""
    for array in arrays:
        sharding = _explicit_sharding(array)
        if sharding is not None:
            return NamedSharding(sharding.mesh, P())
    return None


def _explicit_sharding(x: Array) -> NamedSharding | None:
    """The sharding in the type of `x` when its mesh has `Explicit` axes, else None."""
    sharding = jax.typeof(x).sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or AxisType.Explicit not in mesh.axis_types:
        return None
    return sharding


def _laid_out(x: Array, layout: NamedSharding | None) -> Array:
    """`x` resharded to `layout` (sharding in types), if given and different."""
    if layout is None or jax.typeof(x).sharding == layout:
        return x
    return jax.sharding.reshard(x, layout)


def _soft_counts(
    labels: Array,
    num_classes: int,
    where: ArrayLike | None,
    weights: ArrayLike | None,
    ignore_index: int | None,
) -> Array:
    """`class_counts` for probability labels `[*batch, num_classes]`."""
    if ignore_index is not None:
        raise ValueError("`ignore_index` applies to integer labels; use `where` to mask.")
    if labels.ndim == 0:
        raise ValueError("probability `labels` must have a class axis; got a scalar.")
    expected = (*labels.shape[:-1], num_classes)
    _checks.check_shape(labels, expected, "labels", "[*batch, num_classes] probabilities")
    batch_shape = labels.shape[:-1]
    mask = _reduction.example_mask(batch_shape, where=where)
    layout = _explicit_sharding(labels)
    if layout is not None:
        layout = NamedSharding(layout.mesh, P(*layout.spec[: len(batch_shape)]))
    weight = _masked_example_weights(weights, mask, batch_shape, widest_float(labels.dtype), layout)
    # Double where: masked rows are replaced, so a NaN there cannot reach the sum.
    q = labels.astype(weight.dtype)
    if mask is not None:
        q = jnp.where(_laid_out(mask, layout)[..., None], q, jnp.zeros_like(q))
    return jnp.sum(weight[..., None] * q, axis=tuple(range(len(batch_shape))))


def _masked_example_weights(
    weights: ArrayLike | None,
    mask: Array | None,
    batch_shape: tuple[int, ...],
    dtype: jnp.dtype,
    layout: NamedSharding | None = None,
) -> Array:
    """Per-example weights `[*batch]` (ones by default), exactly 0 where masked.

    In `dtype`, widened to float64 for float64 `weights`. With `Explicit` mesh
    axes, laid out as `layout` (the labels' batch sharding), so that the mask,
    the weights and the labels agree in type.
    """
    if weights is not None:
        dtype = widest_float(dtype, jnp.asarray(weights).dtype)
    weight = _reduction.example_weights(weights, batch_shape, dtype)
    if weight is None:
        weight = jnp.ones(batch_shape, dtype)
    weight = _laid_out(weight, layout)
    if mask is None:
        return weight
    return jnp.where(_laid_out(mask, layout), weight, jnp.zeros_like(weight))


# ---------------------------------------------------------------------------
# Class weights from counts.
# ---------------------------------------------------------------------------

WeightMethod = Literal[
    "inverse", "inverse_sqrt", "balanced", "effective_number", "median_frequency"
]
"""How `class_weights_from_counts` turns counts into weights."""

Normalization = Literal["sum_to_one", "sum_to_num_classes", "mean_one"]
"""How `class_weights_from_counts` rescales the weights (or None: not at all)."""

WEIGHT_METHODS: tuple[str, ...] = get_args(WeightMethod)
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)


def class_weights_from_counts(
    counts: ArrayLike,
    *,
    method: WeightMethod = "inverse",
    normalize: Normalization | None = None,
    beta: float = 0.999,
) -> Array:
    r"""Class weights from class counts: inverse frequency and its relatives.

    With $n_c$ the count of class $c$, $N = \sum_c n_c$, $P = \{c : n_c > 0\}$
    the classes present and $C_+ = |P|$ their number, the raw weight of a
    present class is

    | `method` | $w_c$ | from |
    | --- | --- | --- |
    | `"inverse"` | $1 / n_c$ | |
    | `"inverse_sqrt"` | $1 / \sqrt{n_c}$ | |
    | `"balanced"` | $N / (C_+\, n_c)$ | scikit-learn `class_weight="balanced"` |
    | `"effective_number"` | $(1-\beta) / (1-\beta^{n_c})$ | Cui et al. 2019 |
    | `"median_frequency"` | $\operatorname{median}_{k\in P} n_k \,/\, n_c$ | Eigen & Fergus 2015 |

    and every absent class ($n_c = 0$) gets $w_c = 0$: it has no examples to
    weight, and a weight of 0 keeps its (undefined) inverse frequency out of
    the loss instead of an inf or NaN. Absent classes also take no part in any
    other weight — $C_+$, the median and the normalisations run over present
    classes only — so appending a zero count never changes the other weights.
    `normalize` then rescales all weights by one factor:

    $$
    \texttt{"sum\_to\_one"}: \sum_c w_c = 1,\qquad
    \texttt{"sum\_to\_num\_classes"}: \sum_c w_c = C_+,\qquad
    \texttt{"mean\_one"}: \frac{\sum_c n_c\, w_c}{N} = 1 .
    $$

    `"sum_to_num_classes"` is Cui et al.'s normalisation (their classes are all
    present, so $C_+ = C$): the weight of an average class is 1.
    `"mean_one"` makes the weight of an average *example* 1, so a
    `reduction="mean"` loss keeps its unweighted scale (and learning rate);
    `"balanced"` is `"inverse"` normalised this way.

    Args:
      counts: `[num_classes]` non-negative counts, e.g. from `class_counts`;
        integer counts such as `np.bincount`'s are accepted and computed in
        float32.
      method: one of the methods above.
      normalize: None (the raw weights) or one of the normalisations above.
      beta: $\beta \in [0, 1)$ of `"effective_number"` (ignored otherwise). The
        effective number of $n$ examples is $(1-\beta^n)/(1-\beta)$: close to
        $n$ while $n \ll 1/(1-\beta)$, saturating at $1/(1-\beta)$. Cui et al.
        use 0.9 to 0.9999 depending on the dataset size.

    Returns:
      `[num_classes]` weights, float32 (float64 for float64 counts), finite,
      non-negative and non-increasing in the count; 0 exactly where the count
      is 0, where the gradient with respect to `counts` is finite as well.

    Raises:
      TypeError: `counts` neither integer nor floating point; `beta` not a
        Python float.
      ValueError: `counts` not 1-D; an unknown `method` or `normalize` (the
        message lists the valid ones); `beta` outside [0, 1); in eager calls, a
        negative count.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> counts = jnp.array([1.0, 4.0, 0.0, 5.0])
      >>> print(jwxent.class_weights_from_counts(counts))
      [1.   0.25 0.   0.2 ]
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.class_weights_from_counts(counts, method="inverse_sqrt"))
      ...     print(jwxent.class_weights_from_counts(counts, method="balanced"))
      ...     print(jwxent.class_weights_from_counts(counts, normalize="mean_one"))
      [1.     0.5    0.     0.4472]
      [3.3333 0.8333 0.     0.6667]
      [3.3333 0.8333 0.     0.6667]
      >>> print(jwxent.class_weights_from_counts(counts, method="median_frequency"))
      [4.  1.  0.  0.8]
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.class_weights_from_counts(counts, method="effective_number", beta=0.5))
      [1.     0.5333 0.     0.5161]

      Integer counts, such as `np.bincount`'s, give the same weights:

      >>> import numpy as np
      >>> labels = np.array([0, 1, 1, 1, 1, 3, 3, 3, 3, 3])
      >>> print(jwxent.class_weights_from_counts(np.bincount(labels)))
      [1.   0.25 0.   0.2 ]

    References:
      Cui et al., *Class-Balanced Loss Based on Effective Number of Samples*,
      CVPR 2019. Eigen & Fergus, *Predicting Depth, Surface Normals and
      Semantic Labels with a Common Multi-Scale Convolutional Architecture*,
      ICCV 2015 (median frequency balancing; they count pixels of class $c$
      over the images that contain $c$ — pass such counts to reproduce it
      exactly). King & Zeng, *Logistic Regression in Rare Events Data*, 2001
      (scikit-learn's `"balanced"`).
    """
    counts = jnp.asarray(counts)
    _checks.check_real(counts, "counts")
    _checks.check_rank(counts, 1, "counts", "[num_classes]")
    _checks.check_nonnegative_values(counts, "counts")
    _checks.check_choice(method, WEIGHT_METHODS, "method")
    if normalize is not None:
        _checks.check_choice(normalize, NORMALIZATIONS, "normalize")
    _checks.check_unit_interval(beta, "beta")
    n = counts.astype(widest_float(counts.dtype))
    present = n > 0
    # Double where: the formulas see a count of 1 for absent classes, so that
    # neither their value nor their gradient can be inf or NaN; then the
    # weight is replaced by 0.
    safe_n = jnp.where(present, n, jnp.ones_like(n))
    raw = _RAW_WEIGHTS[method](n, safe_n, present, beta)
    weights = jnp.where(present, raw, jnp.zeros_like(raw))
    if normalize is None:
        return weights
    return weights * _NORMALIZERS[normalize](weights, n, present)


def _num_present(present: Array) -> Array:
    return jnp.sum(present, dtype=jnp.int32)


def _balanced(n: Array, safe_n: Array, present: Array, beta: float) -> Array:
    num_present = _num_present(present).astype(n.dtype)
    return _reduction.safe_divide(jnp.sum(n), num_present) / safe_n


def _effective_number(n: Array, safe_n: Array, present: Array, beta: float) -> Array:
    if beta == 0.0:
        # The β → 0 limit; log(0) would otherwise put 0·inf into the gradient.
        return jnp.ones_like(safe_n)
    # 1 − β^n as −expm1(n·log β): no cancellation for small n, and log β taken
    # in float64 so that one example gets weight 1 up to rounding.
    return (1.0 - beta) / -jnp.expm1(safe_n * math.log(beta))


def _median_of_present(n: Array, present: Array) -> Array:
    """The median of the positive entries of `n >= 0` (0 if there are none)."""
    ascending = jnp.sort(n)  # the absent (zero) counts come first
    num_present = _num_present(present)
    first = n.shape[0] - num_present
    last = n.shape[0] - 1
    low = jnp.minimum(first + (num_present - 1) // 2, last)
    high = jnp.minimum(first + num_present // 2, last)
    return (ascending[low] + ascending[high]) / 2


def _median_frequency(n: Array, safe_n: Array, present: Array, beta: float) -> Array:
    # Frequencies n_c / N share the factor N, which cancels in the ratio.
    return _median_of_present(n, present) / safe_n


_RAW_WEIGHTS: dict[str, Callable[[Array, Array, Array, float], Array]] = {
    "inverse": lambda n, safe_n, present, beta: 1.0 / safe_n,
    "inverse_sqrt": lambda n, safe_n, present, beta: jax.lax.rsqrt(safe_n),
    "balanced": _balanced,
    "effective_number": _effective_number,
    "median_frequency": _median_frequency,
}

# Each normaliser returns the scalar factor; a zero denominator (no class
# present) gives the factor 0 with a zero gradient.
_NORMALIZERS: dict[str, Callable[[Array, Array, Array], Array]] = {
    "sum_to_one": lambda w, n, present: _reduction.safe_divide(jnp.ones((), w.dtype), jnp.sum(w)),
    "sum_to_num_classes": lambda w, n, present: _reduction.safe_divide(
        _num_present(present).astype(w.dtype), jnp.sum(w)
    ),
    "mean_one": lambda w, n, present: _reduction.safe_divide(jnp.sum(n), jnp.sum(n * w)),
}


# ---------------------------------------------------------------------------
# Class weights as a cost matrix.
# ---------------------------------------------------------------------------


def cost_matrix_from_class_weights(
    class_weights: ArrayLike, *, by: Literal["label", "prediction"]
) -> Array:
    r"""A `[C, C]` cost matrix that weights each example by one class's weight.

    `softmax_cross_entropy_with_integer_labels(..., cost_matrix=M)` weights an
    example with label $y$ and prediction $\hat y = \arg\max z$ by
    $M_{y,\hat y}$. This builds the two matrices made of one weight vector $c$:

    $$
    \texttt{by="label"}: M_{y,k} = c_y,
    \qquad
    \texttt{by="prediction"}: M_{y,k} = c_k .
    $$

    `by="label"` gives the same loss as `class_weights=c` (useful to combine
    it with other costs) without label smoothing; with smoothing they differ, as
    class weights act inside the smoothed sum over classes (PyTorch) while a
    cost multiplies the whole example. `by="prediction"` weights each example by the weight
    of the class the model predicts, e.g. to penalise false alarms of a class.
    Multiply such matrices elementwise to combine them.

    Args:
      class_weights: `[num_classes]` floating-point weights $c$.
      by: `"label"` (rows are constant) or `"prediction"` (columns are
        constant).

    Returns:
      `[num_classes, num_classes]` in `class_weights.dtype`; differentiable
      with respect to `class_weights`.

    Raises:
      TypeError: `class_weights` not floating point.
      ValueError: `class_weights` not 1-D; `by` neither `"label"` nor
        `"prediction"`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> weights = jnp.array([1.0, 2.0, 3.0])
      >>> print(jwxent.cost_matrix_from_class_weights(weights, by="prediction"))
      [[1. 2. 3.]
       [1. 2. 3.]
       [1. 2. 3.]]
      >>> logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
      >>> labels = jnp.array([0, 0])
      >>> cost = jwxent.cost_matrix_from_class_weights(weights, by="prediction")
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.softmax_cross_entropy_with_integer_labels(
      ...         logits, labels, cost_matrix=cost))
      [0.2395 6.7186]

      The first example predicts class 0 (weight 1) and its loss is
      $\log(e^2 + 2) - 2 = 0.2395$; the second predicts class 2 (weight 3) and
      its loss is $3\,\log(e^2 + 2) = 3 \cdot 2.2395$.
    """
    class_weights = jnp.asarray(class_weights)
    _checks.check_floating(class_weights, "class_weights")
    _checks.check_rank(class_weights, 1, "class_weights", "[num_classes]")
    _checks.check_choice(by, ("label", "prediction"), "by")
    num_classes = class_weights.shape[0]
    if by == "label":
        return jnp.broadcast_to(class_weights[:, None], (num_classes, num_classes))
    return jnp.broadcast_to(class_weights[None, :], (num_classes, num_classes))
