"""Softmax focal losses (Lin et al. 2017; Keras `CategoricalFocalCrossentropy`).

Per example, with $p = \\mathrm{softmax}(\\tilde z)$ and targets $t_k$ (class
weights times the possibly smoothed labels), the loss is
$\\sum_k t_k\\,h(\\log p_k)$ with $h(\\lambda) = -(1 - e^{\\lambda})^{\\gamma}\\,\\lambda$.

* The label's term needs only $\\log p_y$ = `−nll` per example: it comes from
  the softmax core `row_stats`, and $h$ is applied to that `[batch]` vector in
  plain JAX, so autodiff is exact and no one-hot or probability matrix is built.
* Probability labels, and label smoothing, need a sum over classes of a
  function of $p$. The private core `_focal_sums` computes it as a
  `jax.custom_jvp` of the logits and the row's log-sum-exp (itself from
  `row_stats`, whose derivative then supplies the softmax part):

  $$
  d\\ell = \\sum_k a_k\\,d\\tilde z_k - \\Bigl(\\sum_k a_k\\Bigr)\\,d\\,\\mathrm{lse}
    + \\sum_k h_k\\,dt_k + d\\gamma\\sum_k t_k\\,\\partial_\\gamma h_k ,
  \\qquad a_k = t_k\\,h'(\\log p_k),
  $$

  $$
  h'(\\lambda) = -(1-p)^{\\gamma}\\Bigl(1 - \\gamma\\,p\\,\\frac{\\lambda}{1-p}\\Bigr),
  \\qquad \\partial_\\gamma h = -(1-p)^{\\gamma}\\log(1-p)\\,\\lambda .
  $$

  $\\lambda / (1 - p)$ tends to $-1$ as $p \\to 1$ and takes that limit where
  $1 - p$ rounds to 0. The tangent map runs under `jax.checkpoint`, so reverse
  mode recomputes $p$ in the backward pass instead of storing it. The
  coefficient of $d\\,\\mathrm{lse}$, $\\sum_k a_k$ per row, is summed in the
  forward pass with the focal sums and handed to the tangent map as an input
  (`slopes`), so the backward pass is one elementwise pass with no row
  reduction.

`gamma` may be a Python number (an integer takes `integer_pow`) or a traced
array (then it has a derivative too).
"""

import functools
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from jwxent import _reduction
from jwxent._derivatives import recomputed, with_tangent_map
from jwxent._numerics import (
    expand_rank,
    focal_power,
    hyperparameter,
    is_static_zero,
    joined,
    split_static,
    sum_present,
)
from jwxent._platform import by_platform, identity
from jwxent._softmax._core import RowStats, Target
from jwxent._softmax._options import Options
from jwxent._softmax._passes import (
    adjusted,
    label_hits,
    masked,
    row_sums,
    take_class,
    target_values,
)
from jwxent._softmax._pipeline import (
    Prepared,
    finish,
    prepare_integer,
    prepare_probability,
    smoothed,
    smoothing,
    statistics,
)
from jwxent._softmax._xla_cpu import target_mass
from jwxent._typing import Array, ArrayLike, Axis, Reduction

# ---------------------------------------------------------------------------
# The focal term h(log p) = −(1 − p)^γ · log p.
# ---------------------------------------------------------------------------


def modulated_nll(log_p: Array, gamma: ArrayLike) -> Array:
    """`−(1 − p)^γ · log p` of a vector of `log p`, differentiable by autodiff.

    Where `p` rounds to 1 the loss is 0; the input is replaced there first so
    that `(1 − p)^(γ − 1)` (infinite for γ < 1) and `log(1 − p)` never reach
    the gradient.
    """
    if is_static_zero(gamma):
        return -log_p
    saturated = jnp.expm1(log_p) >= 0
    safe_log_p = jnp.where(saturated, -1.0, log_p)
    value = -focal_power(-jnp.expm1(safe_log_p), gamma) * safe_log_p
    return jnp.where(saturated, jnp.zeros_like(value), value)


def _focal_terms(log_p: Array, gamma: ArrayLike, live: Array) -> tuple[Array, Array, Array]:
    """`h`, `h'` and `∂h/∂γ` at `log p`; 0 where not `live` (masked classes, −inf logits)."""
    log_p = jnp.where(live, log_p, -1.0)
    p = jnp.exp(log_p)
    # 1 − p, never below 0 where rounding puts log p a hair above 0.
    u = jnp.maximum(-jnp.expm1(log_p), 0.0)
    modulator = focal_power(u, gamma)
    positive = u > 0
    safe_u = jnp.where(positive, u, 1.0)
    # log p / (1 − p) → −1 as p → 1; take the limit where 1 − p rounds to 0.
    ratio = jnp.where(positive, log_p / safe_u, -1.0)
    g = hyperparameter(gamma, log_p.dtype)
    h = -modulator * log_p
    dh = -modulator * (1.0 - g * p * ratio)
    dh_dgamma = jnp.where(positive, -modulator * jnp.log(safe_u) * log_p, 0.0)
    zeros = jnp.zeros_like(h)
    return tuple(jnp.where(live, x, zeros) for x in (h, dh, dh_dgamma))  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# The custom-JVP core for sums over classes.
# ---------------------------------------------------------------------------


class _FocalSumInputs(NamedTuple):
    logits: Array
    class_mask: Array | None
    labels: Array | None
    offsets: Array | None
    margins: Array | None
    shift: Array
    log_sum: Array
    gamma: Array | None
    targets: tuple[Target, ...]
    sums: tuple[Array, ...]
    slopes: tuple[Array, ...]


def _log_probs(inputs: _FocalSumInputs) -> tuple[Array, Array]:
    """`log softmax(z̃)` from the given log-sum-exp, and where it is finite."""
    dtype = inputs.log_sum.dtype
    zt = adjusted(inputs.logits, inputs.offsets, dtype)
    margin = _at_label(zt, inputs.labels, inputs.margins, dtype)
    zt = masked(zt if margin is None else zt - margin, inputs.class_mask)
    # Shift and log-sum subtracted one at a time: exact for huge logits.
    log_p = zt - inputs.shift[..., None] - inputs.log_sum[..., None]
    return log_p, jnp.isfinite(zt)


def _at_label(
    like: Array, labels: Array | None, values: Array | None, dtype: jnp.dtype
) -> Array | None:
    """`values[y]` at each row's label and 0 elsewhere, shaped like `like` (None if absent)."""
    if values is None or labels is None:
        return None
    value = take_class(values.astype(dtype), labels)[..., None]
    return jnp.where(label_hits(like, labels), value, jnp.zeros((), dtype))


def _focal_sums_of(static_gamma: float | None, inputs: _FocalSumInputs) -> tuple[Array, ...]:
    """The focal sums, given: `focal_sums` computes them with their slopes."""
    del static_gamma
    return inputs.sums


def _focal_tangents(
    static_gamma: float | None,
    inputs: _FocalSumInputs,
    sums: tuple[Array, ...],
    d_inputs: _FocalSumInputs,
) -> tuple[Array | None, ...]:
    """The tangents of `_focal_sums`, linear in `d_inputs` (None: no tangent)."""
    del sums
    # On GPUs and TPUs the logits under their own name: XLA would otherwise merge
    # (CSE) this `t·h'` with the forward pass's (`_sums_and_slopes_of`) and keep it
    # as a `[batch, classes]` buffer from one pass to the other.
    logits = by_platform(inputs.logits, cpu=identity, default=lax.optimization_barrier)
    inputs = inputs._replace(logits=logits)
    dz, _, _, d_offsets, d_margins, d_shift, d_log_sum, d_gamma, d_targets, _, _ = d_inputs
    log_p, live = _log_probs(inputs)
    dtype = log_p.dtype
    h, dh, dh_dgamma = _focal_terms(log_p, joined(static_gamma, inputs.gamma), live)
    d_margin = _at_label(log_p, inputs.labels, d_margins, dtype)
    dzt = sum_present(
        None if dz is None else dz.astype(dtype),
        None if d_offsets is None else expand_rank(d_offsets.astype(dtype), log_p.ndim),
        None if d_margin is None else -d_margin,
    )
    d_lse = sum_present(d_shift, d_log_sum)
    d_sums = []
    for t, dt, slope in zip(inputs.targets, d_targets, inputs.slopes, strict=True):
        values = target_values(*t, log_p.ndim, dtype)
        a = values * dh
        d_values = sum_present(
            None if dt.rows is None else target_values(dt.rows, t.classes, log_p.ndim, dtype),
            None if dt.classes is None else target_values(t.rows, dt.classes, log_p.ndim, dtype),
        )
        terms = [
            None if dzt is None else jnp.sum(a * dzt, axis=-1),
            None if d_lse is None else -by_platform(a, slope, cpu=_row_sum, default=_given) * d_lse,
            None if d_values is None else jnp.sum(d_values * h, axis=-1),
            None if d_gamma is None else jnp.sum(values * dh_dgamma, axis=-1) * d_gamma,
        ]
        d_sums.append(sum_present(*terms))
    return tuple(d_sums)


_focal_sums = with_tangent_map(_focal_sums_of, _focal_tangents)


def focal_sums(
    prepared: Prepared, stats: RowStats, *, gamma: ArrayLike, targets: tuple[Target, ...]
) -> tuple[tuple[Array, ...], Array | None]:
    """`Σ_k t_k·h(log p_k)` per row for each target, differentiable in every mode,
    and the rows' label weight.

    `p` is the softmax of `row_stats`, whose `stats` are given: `z + δ`, and
    with margins the label's logit lowered by its margin. The label weight is
    `prepared.label_weight`, or with probability labels and class weights
    `Σ_k t_k` of the first target (`c·q`), summed in the same pass off XLA:CPU.
    """
    static_gamma, gamma_array = split_static(gamma, stats.shift.dtype)
    inputs = _FocalSumInputs(
        prepared.z,
        prepared.class_mask,
        prepared.labels,
        prepared.offsets,
        prepared.margins,
        stats.shift,
        stats.log_sum,
        gamma_array,
        tuple(targets),
        (),
        (),
    )
    # With probability labels and class weights, the label weight `Σ_k c_k q_k`
    # is the mass of the first target.
    with_mass = prepared.probabilities is not None and prepared.class_weights is not None
    sums, slopes, mass = by_platform(
        inputs,
        cpu=functools.partial(_sums_without_slopes, static_gamma, with_mass),
        default=functools.partial(_sums_and_slopes, static_gamma, with_mass, True),
        tpu=functools.partial(_sums_and_slopes, static_gamma, with_mass, False),
    )
    focal = _focal_sums(static_gamma, inputs._replace(sums=sums, slopes=slopes))
    return focal, mass if with_mass else prepared.label_weight


def _sums_without_slopes(
    static_gamma: float | None, with_mass: bool, inputs: _FocalSumInputs
) -> tuple[tuple[Array, ...], tuple[Array, ...], Array | None]:
    """The focal sums alone, zeros for slopes (XLA:CPU's backward pass sums them),
    and `with_mass` the first target's mass in a pass of its own (else None).

    On XLA:CPU the extra forward reduction costs more than the backward one
    it saves (`focal/soft` at 8192 x 32000 f32: 4.0 s -> 7.7 s, and a fourth
    `[batch, classes]` float32 temporary).
    """
    sums = _plain_sums(static_gamma, inputs)
    mass = None
    if with_mass:
        q, class_weights = inputs.targets[0]
        assert q is not None
        mass = target_mass(q, class_weights, inputs.log_sum.dtype)
    return sums, tuple(jnp.zeros_like(x) for x in sums), mass


def _plain_sums_of(static_gamma: float | None, inputs: _FocalSumInputs) -> tuple[Array, ...]:
    """`Σ_k t_k·h(log p_k)` per row and target, each its own sum."""
    log_p, live = _log_probs(inputs)
    h, _, _ = _focal_terms(log_p, joined(static_gamma, inputs.gamma), live)
    values = [target_values(*t, log_p.ndim, log_p.dtype) for t in inputs.targets]
    return tuple(jnp.sum(t * h, axis=-1) for t in values)


def _row_sum(a: Array, slope: Array) -> Array:
    del slope
    return jnp.sum(a, axis=-1)


def _given(a: Array, slope: Array) -> Array:
    del a
    return slope


def _sums_and_slopes_of(
    static_gamma: float | None, with_mass: bool, pieces: bool, inputs: _FocalSumInputs
) -> tuple[tuple[Array, ...], tuple[Array, ...], Array | None]:
    """Per row and target, `Σ_k t_k·h(log p_k)` and `Σ_k t_k·h'(log p_k)`, and
    `with_mass` the first target's mass `Σ_k t_k` (else None), in one pass.

    `log p = z̃ − shift − log_sum`. The second, the coefficient of `d lse`,
    is what the tangent map needs before its elementwise part: summed here
    with the focal sums, it spares the backward pass a row reduction, after
    which XLA:GPU would keep `t·h'` as a `[batch, classes]` float32 buffer
    for the elementwise pass. Both enter the custom JVP `_focal_sums` as
    inputs whose tangents it ignores: the sums are its value, the slopes a
    coefficient of its tangent map, which a second derivative differentiates
    as plain JAX. The label weight `Σ_k c_k q_k` joins them: as a
    matrix-vector product of its own it reads the labels once more (1.22x
    the plain formula's traffic at 65536 x 1000 bf16 on an H100, 1.00x with
    it here). All are one variadic reduction (`row_sums`, cut in pieces on
    GPUs): as separate sums, XLA folds the focal sums into the batch's total,
    apart from the label weight's, and takes that total into the backward
    pass.
    """
    log_p, live = _log_probs(inputs)
    h, dh, _ = _focal_terms(log_p, joined(static_gamma, inputs.gamma), live)
    dtype = log_p.dtype
    values = [target_values(*t, log_p.ndim, dtype) for t in inputs.targets]
    masses = values[:1] if with_mass else []
    terms = [t * h for t in values] + [t * dh for t in values] + masses
    totals = row_sums(tuple(jnp.broadcast_to(x, log_p.shape) for x in terms), pieces)
    k = len(values)
    return totals[:k], totals[k : 2 * k], totals[-1] if with_mass else None


# Recomputed in reverse mode: their residuals would be `[batch, classes]` arrays.
_plain_sums = recomputed(_plain_sums_of, static_argnums=(0,))
_sums_and_slopes = recomputed(_sums_and_slopes_of, static_argnums=(0, 1, 2))


# ---------------------------------------------------------------------------
# Public losses.
# ---------------------------------------------------------------------------


def softmax_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: ArrayLike = 2.0,
    axis: Axis | None = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    class_weights: ArrayLike | None = None,
    cost_matrix: ArrayLike | None = None,
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    logit_adjustment: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> Array:
    r"""Multi-class softmax focal loss with probability (or one-hot) labels.

    Keras's `CategoricalFocalCrossentropy(from_logits=True)` semantics, with
    Keras's `alpha` as `class_weights` (Keras's scalar default `alpha=0.25`
    is `class_weights=jnp.full(C, 0.25)`; jwxent's default is no weighting).
    With $p = \mathrm{softmax}(z + \delta)$, class weights $c_k$ and smoothed
    labels $\tilde q = (1 - \varepsilon)\,q + \varepsilon / C$:

    $$
    \ell = -\sum_k c_k\,\tilde q_k\,(1 - p_k)^{\gamma}\log p_k
      + \lambda_z\,w_q\,\mathrm{lse}^2 .
    $$

    $\gamma = 0$ gives `softmax_cross_entropy` with the same class weights.
    The example's weight for the `"weighted_mean"` denominator is
    $w_q = \text{weights}\cdot\sum_k c_k q_k$ (just `weights` without
    `class_weights`), as in `softmax_cross_entropy`. Unlike Keras, which
    clips the softmax to $[10^{-7}, 1 - 10^{-7}]$ before the logarithm, the
    loss uses the exact $\log p$, as optax and PyTorch do.

    Args:
      logits: `[*batch, num_classes]` floating point.
      labels: probabilities broadcastable to `logits.shape`.
      gamma: focusing exponent $\gamma \ge 0$: a Python number (an integer
        takes a faster path) or a (traced) scalar array.
      axis: class axis or tuple of axes (or None for all), as in optax.
      where: bool `[*batch]` example mask or logits-shaped class mask (optax).
        Masked examples give exactly 0 loss and 0 gradient.
      weights: per-example multiplier broadcastable to `[*batch]`.
      class_weights: `[num_classes]`, Keras's per-class `alpha`.
      cost_matrix: `[num_classes, num_classes]`; the example is weighted by
        $\sum_y q_y M_{y,\arg\max z}$.
      label_smoothing: $\varepsilon \in [0, 1)$, applied to the labels first.
      z_loss: $\lambda_z \ge 0$.
      logit_adjustment: `[num_classes]` offsets $\delta$ added inside the
        softmax only.
      reduction: `"none"`, `"sum"`, `"mean"`, `"weighted_mean"` or
        `"sum_by_nonzero_weights"`.

    Returns:
      `[*batch]` for `reduction="none"`, else a scalar; float32 for
      half-precision logits, the logits' dtype otherwise.

    Raises:
      TypeError: non-floating `logits`.
      ValueError: negative `gamma`, shapes that do not broadcast, bad options.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.25, 0.5, 0.25]]))
      >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.softmax_focal_loss(logits, labels))
      [0.0321 0.7798]
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.softmax_focal_loss(logits, labels, gamma=0.0))
      [0.3567 1.3863]

    Notes:
      A `jax.custom_jvp` over the class sum (see the module notes) on top of
      the softmax core; the cotangents of `labels`, `class_weights` and a
      traced `gamma` are returned too. Forward and reverse mode both work.

    References:
      Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017; Keras,
      `keras.losses.CategoricalFocalCrossentropy`.
    """
    options = Options.of(locals())
    prepared = prepare_probability(logits, labels, axis, where, options)
    stats = statistics(prepared)
    targets = (Target(prepared.probabilities, prepared.class_weights),)
    if options.smoothed:
        targets += (smoothing(prepared)[0],)
    sums, label_weight = focal_sums(prepared, stats, gamma=gamma, targets=targets)
    prepared = prepared._replace(label_weight=label_weight)
    spread = sums[1] if options.smoothed else None
    loss = smoothed(sums[0], spread, label_smoothing, prepared.num_classes)
    return finish(loss, stats, prepared, options)


def softmax_focal_loss_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: ArrayLike = 2.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    class_weights: ArrayLike | None = None,
    cost_matrix: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    logit_adjustment: ArrayLike | None = None,
    label_margins: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> Array:
    r"""Multi-class softmax focal loss with integer labels, no one-hot built.

    `softmax_focal_loss` for integer labels. Per example, with class weights
    $c_k$, label smoothing $\varepsilon$, $C$ classes and $p$ the softmax of
    the adjusted (and, for the label, margined) logits of
    `softmax_cross_entropy_with_integer_labels`:

    $$
    \ell = -(1 - \varepsilon)\,c_y\,(1 - p_y)^{\gamma}\log p_y
      - \frac{\varepsilon}{C}\sum_k c_k\,(1 - p_k)^{\gamma}\log p_k
      + \lambda_z\,c_y\,\mathrm{lse}^2 ,
    $$

    the focal version of PyTorch's smoothed, class-weighted cross-entropy.
    The example's weight is $w = \text{weights}\cdot c_y\cdot
    M_{y,\arg\max z}$, and $\gamma = 0$ gives
    `softmax_cross_entropy_with_integer_labels`. Cui et al.'s class-balanced
    focal loss is `class_weights` from
    `class_weights_from_counts(method="effective_number")` with this loss.

    Args:
      logits: `[*batch, num_classes]` floating point.
      labels: integer `[*batch]` class indices in `[0, num_classes)`.
      gamma: focusing exponent $\gamma \ge 0$: a Python number or a (traced)
        scalar array.
      axis: class axis, or a tuple of axes (a label is then a flat index).
      where: bool `[*batch]` example mask or logits-shaped class mask.
      weights: per-example multiplier broadcastable to `[*batch]`.
      class_weights: `[num_classes]`, gathered by label.
      cost_matrix: `[num_classes, num_classes]`; the example is weighted by
        `cost_matrix[y, argmax(logits)]`.
      ignore_index: examples with this label are masked (PyTorch).
      label_smoothing: $\varepsilon \in [0, 1)$.
      z_loss: $\lambda_z \ge 0$.
      logit_adjustment: `[num_classes]` offsets added inside the softmax.
      label_margins: `[num_classes]` margins subtracted from the label's logit.
      reduction: one of the five reductions.

    Returns:
      `[*batch]` for `reduction="none"`, else a scalar; float32 for
      half-precision logits, the logits' dtype otherwise.

    Raises:
      TypeError: non-floating `logits`, non-integer `labels`.
      ValueError: negative `gamma`, mismatched shapes, bad options, and, in
        eager calls, labels out of range. Under `jit` an out-of-range label
        gives NaN for its example.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.25, 0.5, 0.25]]))
      >>> labels = jnp.array([0, 2])
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.softmax_focal_loss_with_integer_labels(logits, labels))
      [0.0321 0.7798]
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.softmax_focal_loss_with_integer_labels(
      ...         logits, labels, class_weights=jnp.array([1.0, 1.0, 0.5])))
      [0.0321 0.3899]

    Notes:
      Without label smoothing the derivative is autodiff of a `[batch]`
      function on top of the softmax core's `jax.custom_jvp`; with smoothing,
      the custom JVP of the class sum as well. Forward and reverse mode both
      work.

    References:
      Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017. Cui et
      al., *Class-Balanced Loss Based on Effective Number of Samples*, CVPR 2019.
    """
    options = Options.of(locals())
    prepared = prepare_integer(logits, labels, axis, where, options)
    stats = statistics(prepared)
    loss = _reduction.scale(modulated_nll(-stats.nll, gamma), prepared.label_weight)
    spread = None
    if options.smoothed:
        (spread,), _ = focal_sums(prepared, stats, gamma=gamma, targets=(smoothing(prepared)[0],))
    loss = smoothed(loss, spread, label_smoothing, prepared.num_classes)
    return finish(loss, stats, prepared, options)
