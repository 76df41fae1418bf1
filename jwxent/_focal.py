"""Softmax focal losses (Lin et al. 2017; Keras `CategoricalFocalCrossentropy`).

Per example, with $p = \\mathrm{softmax}(z)$ and targets $t_k = c_k\\,\\tilde q_k$
(class weights times the possibly smoothed labels), the loss is
$\\sum_k t_k\\,h(\\log p_k)$ with $h(\\lambda) = -(1 - e^{\\lambda})^{\\gamma}\\,\\lambda$.

* Integer labels without smoothing need only $\\log p_y$ = `picked − lse` per
  example: it comes from the softmax core `logit_stats` (its custom VJP), and
  $h$ is applied to that `[batch]` vector in plain JAX, so autodiff is exact and
  no one-hot or probability matrix is built.
* Probability labels, and label smoothing, need a sum over classes of a
  function of $p$. The private core `_focal_sum` computes it with a custom VJP:

  $$
  \\frac{\\partial \\ell}{\\partial z_j} = a_j - p_j \\sum_k a_k,\\qquad
  a_k = t_k\\,h'(\\log p_k),\\qquad
  h'(\\lambda) = -(1-p)^{\\gamma}\\Bigl(1 - \\gamma\\,p\\,\\frac{\\lambda}{1-p}\\Bigr),
  $$

  saving only the logits and one log-sum-exp per row; $p$ is recomputed in the
  backward pass. $\\lambda / (1 - p)$ tends to $-1$ as $p \\to 1$ and takes that
  limit where $1 - p$ rounds to 0.
"""

import functools
from typing import cast

import jax
import jax.numpy as jnp

from jwxent import _checks, _reduction
from jwxent._softmax import (
    PreparedLogits,
    _class_weights,
    _label_hits,
    _logsumexp,
    _rows,
    _softmax,
    _sum_to_shape,
    logit_stats,
    prepare_integer_labels,
)
from jwxent._typing import Array, ArrayLike, Axis, Reduction

# ---------------------------------------------------------------------------
# The focal term h(log p) = −(1 − p)^γ · log p.
# ---------------------------------------------------------------------------


def _modulated_nll(log_p: Array, gamma: float) -> Array:
    """`−(1 − p)^γ · log p` of a vector of `log p`, differentiable by autodiff.

    Where `p` rounds to 1 the loss is 0; the input is replaced there first so
    that `(1 − p)^(γ − 1)` (infinite for γ < 1) never reaches the gradient.
    """
    if gamma == 0:
        return -log_p
    saturated = jnp.expm1(log_p) >= 0
    safe_log_p = jnp.where(saturated, -1.0, log_p)
    value = -((-jnp.expm1(safe_log_p)) ** gamma) * safe_log_p
    return jnp.where(saturated, jnp.zeros_like(value), value)


def _focal_terms(log_p: Array, p: Array, gamma: float) -> tuple[Array, Array]:
    """`h(log p)` and `h'(log p)` elementwise, for finite `log_p <= 0`."""
    one_minus_p = -jnp.expm1(log_p)
    modulator = jnp.ones_like(log_p) if gamma == 0 else one_minus_p**gamma
    positive = one_minus_p > 0
    # log p / (1 − p) → −1 as p → 1; take the limit where 1 − p rounds to 0.
    ratio = jnp.where(positive, log_p / jnp.where(positive, one_minus_p, 1.0), -1.0)
    return -modulator * log_p, -modulator * (1.0 - gamma * p * ratio)


# ---------------------------------------------------------------------------
# The custom-VJP core for a sum over classes.
# ---------------------------------------------------------------------------


def _targets(z, labels, label_coef, targets):
    """`t = targets + label_coef·[k == label]`, broadcast over rows (no one-hot kept)."""
    t = jnp.zeros_like(z) if targets is None else _rows(targets.astype(z.dtype), z.ndim)
    if labels is not None:
        coef = label_coef.astype(z.dtype)[..., None]
        t = t + jnp.where(_label_hits(z, labels), coef, jnp.zeros_like(coef))
    return t


def _class_terms(logits, class_mask, lse, gamma):
    """Per-class `p`, `h`, `h'`; masked classes and `-inf` logits contribute 0."""
    z = logits.astype(lse.dtype)
    p = _softmax(z, lse, class_mask)
    live = ~jnp.isneginf(z)
    if class_mask is not None:
        live = live & class_mask
    log_p = jnp.where(live, z - lse[..., None], 0.0)
    h, dh = _focal_terms(log_p, p, gamma)
    zeros = jnp.zeros_like(h)
    return z, p, jnp.where(live, h, zeros), jnp.where(live, dh, zeros)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _focal_sum(
    gamma: float,
    logits: Array,
    class_mask: Array | None,
    labels: Array | None,
    label_coef: Array | None,
    targets: Array | None,
) -> Array:
    """Per-row `Σ_k t_k·h(log p_k)` of `[..., C]` logits.

    Args:
      gamma: static focusing exponent, `>= 0`.
      logits: `[..., C]` floating point.
      class_mask: bool `[..., C]` of the classes in the softmax, or None.
      labels: integer `[...]` within `[0, C)`, or None.
      label_coef: `[...]` floating point, the target mass put on each label
        (with `labels`), or None.
      targets: `[..., C]` or `[C]` floating point, or None.

    Returns:
      `[...]` in the compute dtype.
    """
    return _focal_sum_fwd(gamma, logits, class_mask, labels, label_coef, targets)[0]


def _focal_sum_fwd(gamma, logits, class_mask, labels, label_coef, targets):
    lse = _logsumexp(logits, class_mask)
    z, _, h, _ = _class_terms(logits, class_mask, lse, gamma)
    loss = jnp.sum(_targets(z, labels, label_coef, targets) * h, axis=-1)
    # Residuals: the inputs as given and one lse per row; p is recomputed.
    return loss, (logits, class_mask, labels, label_coef, targets, lse)


def _focal_sum_bwd(gamma, residuals, g):
    logits, class_mask, labels, label_coef, targets, lse = residuals
    z, p, h, dh = _class_terms(logits, class_mask, lse, gamma)
    a = _targets(z, labels, label_coef, targets) * dh
    d_logits = g[..., None] * (a - p * jnp.sum(a, axis=-1, keepdims=True))
    d_label_coef = d_targets = None
    if labels is not None and label_coef is not None:
        picked_h = jnp.sum(jnp.where(_label_hits(z, labels), h, jnp.zeros_like(h)), axis=-1)
        d_label_coef = (g * picked_h).astype(label_coef.dtype)
    if targets is not None:
        d_targets = _sum_to_shape(g[..., None] * h, targets.shape).astype(targets.dtype)
    return d_logits.astype(logits.dtype), None, None, d_label_coef, d_targets


_focal_sum.defvjp(_focal_sum_fwd, _focal_sum_bwd)


# ---------------------------------------------------------------------------
# Public losses.
# ---------------------------------------------------------------------------


def _check_options(gamma: float, label_smoothing: float, reduction: str) -> float:
    _checks.check_label_smoothing(label_smoothing)
    _checks.check_reduction(reduction)
    return _checks.static_gamma(gamma)


def _reduce(
    loss: Array,
    prepared: PreparedLogits,
    *,
    weights: ArrayLike | None,
    label_weight: Array | None,
    mask: Array | None,
    reduction: Reduction,
) -> Array:
    """Applies `weights` and reduces with the effective weight `weights·label_weight`."""
    example_weight = _reduction.example_weights(weights, prepared.batch_shape, prepared.dtype)
    return _reduction.reduce_loss(
        _reduction.scale(loss, example_weight),
        reduction,
        mask=mask,
        weight=_reduction.multiply(example_weight, label_weight),
    )


def softmax_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 2.0,
    axis: Axis | None = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    class_weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "none",
) -> Array:
    r"""Multi-class softmax focal loss with probability (or one-hot) labels.

    Keras's `CategoricalFocalCrossentropy(from_logits=True)` semantics, with
    Keras's `alpha` as `class_weights` (Keras's scalar default `alpha=0.25`
    is `class_weights=jnp.full(C, 0.25)`; jwxent's default is no weighting).
    With $p = \mathrm{softmax}(z)$, class weights $c_k$ and smoothed labels
    $\tilde q = (1 - \varepsilon)\,q + \varepsilon / C$:

    $$
    \ell = -\sum_k c_k\,\tilde q_k\,(1 - p_k)^{\gamma}\log p_k .
    $$

    $\gamma = 0$ gives `softmax_cross_entropy` with the same class weights.
    The example's weight for the `"weighted_mean"` denominator is
    $\text{weights}\cdot\sum_k c_k q_k$ (just `weights` without
    `class_weights`), as in `softmax_cross_entropy`. Unlike Keras, which
    clips the softmax to $[10^{-7}, 1 - 10^{-7}]$ before the logarithm, the
    loss uses the exact $\log p$, as optax and PyTorch do.

    Args:
      logits: `[*batch, num_classes]` floating point.
      labels: probabilities broadcastable to `logits.shape`.
      gamma: focusing exponent $\gamma \ge 0$, a Python number (static).
      axis: class axis or tuple of axes (or None for all), as in optax.
      where: bool `[*batch]` example mask or logits-shaped class mask (optax).
        Masked examples give exactly 0 loss and 0 gradient.
      weights: per-example multiplier broadcastable to `[*batch]`.
      class_weights: `[num_classes]`, Keras's per-class `alpha`.
      label_smoothing: $\varepsilon \in [0, 1)$, applied to the labels first.
      reduction: `"none"`, `"sum"`, `"mean"`, `"weighted_mean"` or
        `"sum_by_nonzero_weights"`.

    Returns:
      `[*batch]` for `reduction="none"`, else a scalar; float32 for
      half-precision logits, the logits' dtype otherwise.

    Raises:
      TypeError: non-floating `logits`; a traced `gamma`.
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
      Custom VJP over the class sum (see the module notes); the cotangents of
      `labels` and `class_weights` are returned too. Reverse mode only.

    References:
      Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017; Keras,
      `keras.losses.CategoricalFocalCrossentropy`.
    """
    gamma = _check_options(gamma, label_smoothing, reduction)
    prepared = PreparedLogits(logits, axis, where)
    raw = prepared.classes_last(labels, "labels").astype(prepared.dtype)
    q = raw
    if label_smoothing:
        q = (1.0 - label_smoothing) * q + label_smoothing / prepared.num_classes
    cw = _class_weights(class_weights, prepared)
    targets = q if cw is None else q * _rows(cw, q.ndim)
    mask = prepared.row_mask
    # Masked rows and classes get zero targets, so their labels can hold anything.
    keep = _reduction.combine_masks(prepared.logit_mask, None if mask is None else mask[..., None])
    if keep is not None:
        targets = jnp.where(keep, targets, jnp.zeros_like(targets))
    z, class_mask = prepared.masked_inputs(mask)
    loss = cast(Array, _focal_sum(gamma, z, class_mask, None, None, targets))
    label_weight = None if cw is None else jnp.sum(raw * _rows(cw, raw.ndim), axis=-1)
    return _reduce(
        loss, prepared, weights=weights, label_weight=label_weight, mask=mask, reduction=reduction
    )


def softmax_focal_loss_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 2.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "none",
) -> Array:
    r"""Multi-class softmax focal loss with integer labels, no one-hot built.

    `softmax_focal_loss` for integer labels. Per example, with class weights
    $c_k$, label smoothing $\varepsilon$ and $C$ classes:

    $$
    \ell = -(1 - \varepsilon)\,c_y\,(1 - p_y)^{\gamma}\log p_y
      - \frac{\varepsilon}{C}\sum_k c_k\,(1 - p_k)^{\gamma}\log p_k ,
    $$

    the focal version of PyTorch's smoothed, class-weighted cross-entropy.
    The example's weight for the `"weighted_mean"` denominator is
    $\text{weights}\cdot c_y$, and $\gamma = 0$ gives
    `softmax_cross_entropy_with_integer_labels`.

    Args:
      logits: `[*batch, num_classes]` floating point.
      labels: integer `[*batch]` class indices in `[0, num_classes)`.
      gamma: focusing exponent $\gamma \ge 0$, a Python number (static).
      axis: class axis, or a tuple of axes (a label is then a flat index).
      where: bool `[*batch]` example mask or logits-shaped class mask.
      weights: per-example multiplier broadcastable to `[*batch]`.
      class_weights: `[num_classes]`, gathered by label.
      ignore_index: examples with this label are masked (PyTorch).
      label_smoothing: $\varepsilon \in [0, 1)$.
      reduction: one of the five reductions.

    Returns:
      `[*batch]` for `reduction="none"`, else a scalar; float32 for
      half-precision logits, the logits' dtype otherwise.

    Raises:
      TypeError: non-floating `logits`, non-integer `labels`, a traced `gamma`.
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
      Without label smoothing the gradient is autodiff of a `[batch]` function
      on top of the softmax core's custom VJP; with smoothing, the custom VJP of
      the class sum. Reverse mode only.

    References:
      Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017.
    """
    gamma = _check_options(gamma, label_smoothing, reduction)
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
    label_weight = inputs.label_weight

    if label_smoothing:
        ones = jnp.ones(prepared.batch_shape, prepared.dtype)
        label_coef = (1.0 - label_smoothing) * _reduction.scale(ones, label_weight)
        spread = cw if cw is not None else jnp.ones(num_classes, prepared.dtype)
        spread = (label_smoothing / num_classes) * spread
        loss = cast(Array, _focal_sum(gamma, z, class_mask, safe_labels, label_coef, spread))
    else:
        lse, picked, _, _ = logit_stats(z, class_mask, labels=safe_labels)
        loss = _reduction.scale(_modulated_nll(picked - lse, gamma), label_weight)
    # Out-of-range labels under jit: NaN for that example, never a clamped value.
    loss = jnp.where(inputs.valid, loss, jnp.nan)
    return _reduce(
        loss, prepared, weights=weights, label_weight=label_weight, mask=mask, reduction=reduction
    )
