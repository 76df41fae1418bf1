"""Sigmoid family: independent binary decisions (binary and multi-label losses).

Both losses are elementwise, like optax's and PyTorch's: the loss has the
shape of `logits`, and `labels`, `weights` and `where` broadcast to that shape
without enlarging it (optax would broadcast the labels; Keras and PyTorch raise).
Each has a small `jax.custom_jvp` core that returns the unweighted elementwise
loss with a hand-written tangent map (which XLA transposes into the backward
pass, so forward and reverse mode both use it); `weights`, `alpha`, label
smoothing, masks and reductions stay outside it
in plain JAX, so autodiff composes with them.

With $s = \\sigma(x)$, $\\log s = -\\operatorname{softplus}(-x)$ and
$\\log(1 - s) = -\\operatorname{softplus}(x)$ are used throughout, so the losses
and their derivatives are finite for logits of any finite size. The tangent
maps run under `jax.checkpoint`: reverse mode recomputes the sigmoid from the
logits instead of storing it.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jwxent import _checks, _reduction
from jwxent._derivatives import with_tangent_map
from jwxent._numerics import (
    compute_dtype,
    expand_rank,
    focal_power,
    hyperparameter,
    is_static_zero,
    joined,
    split_static,
    sum_present,
)
from jwxent._typing import Array, ArrayLike, Reduction

# ---------------------------------------------------------------------------
# Shared preparation.
# ---------------------------------------------------------------------------


def _elementwise_inputs(logits: ArrayLike, labels: ArrayLike) -> tuple[Array, Array]:
    """`logits` and float `labels`, validated, the labels broadcast to the logits' shape.

    Labels that would enlarge the loss, or a last axis of size 1 against more
    labels per example, are errors (`_checks.check_labels_broadcastable`).
    Integer or boolean labels become floats of the compute dtype; floating
    labels keep their dtype so that their cotangent comes back in it.
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _checks.check_floating(logits, "logits")
    shape = tuple(logits.shape)
    _checks.check_labels_broadcastable(labels, shape, (-1,) if shape else ())
    if not jnp.issubdtype(labels.dtype, jnp.floating):
        labels = labels.astype(compute_dtype(logits.dtype))
    return _broadcast(logits, shape), _broadcast(labels, shape)


def _broadcast(x: Array, shape: tuple[int, ...]) -> Array:
    return x if x.shape == shape else jnp.broadcast_to(x, shape)


def _masked_inputs(logits: Array, labels: Array, mask: Array | None) -> tuple[Array, Array]:
    """Zeroes masked logits and labels so nothing non-finite reaches the gradient."""
    if mask is None:
        return logits, labels
    return (
        jnp.where(mask, logits, jnp.zeros_like(logits)),
        jnp.where(mask, labels, jnp.zeros_like(labels)),
    )


def _sigmoid_pair(x: Array) -> tuple[Array, Array]:
    """`(σ(x), σ(−x))` from one exponential, each accurate where it is tiny."""
    small = jnp.exp(-jnp.abs(x))
    large = 1.0 / (1.0 + small)
    small = small * large
    positive = x >= 0
    return jnp.where(positive, large, small), jnp.where(positive, small, large)


def _softplus_pair(x: Array) -> tuple[Array, Array]:
    """`(softplus(x), softplus(-x))` = `(−log(1 − σ(x)), −log σ(x))`."""
    return jax.nn.softplus(x), jax.nn.softplus(-x)


def _tangent(dx: Array | None, dtype: jnp.dtype, ndim: int) -> Array | None:
    return None if dx is None else expand_rank(dx.astype(dtype), ndim)


# ---------------------------------------------------------------------------
# Binary cross-entropy core.
# ---------------------------------------------------------------------------


class _BCEInputs(NamedTuple):
    logits: Array
    labels: Array
    pos_weight: Array | None


def _bce_upcast(inputs: _BCEInputs) -> tuple[Array, Array, Array]:
    dtype = compute_dtype(inputs.logits.dtype)
    x, y = inputs.logits.astype(dtype), inputs.labels.astype(dtype)
    c = jnp.ones((), dtype) if inputs.pos_weight is None else inputs.pos_weight.astype(dtype)
    return x, y, expand_rank(c, x.ndim)


def _bce_of(static: None, inputs: _BCEInputs) -> Array:
    """Elementwise `(1 − y)·softplus(x) + c·y·softplus(−x)`, `c = pos_weight` or 1.

    The loss shape is that of `logits` (= `labels`); `pos_weight` broadcasts
    to it. In the compute dtype of `logits`.
    """
    x, y, c = _bce_upcast(inputs)
    neg_log_not_p, neg_log_p = _softplus_pair(x)
    return (1.0 - y) * neg_log_not_p + c * y * neg_log_p


def _bce_tangent(
    static: None, inputs: _BCEInputs, value: Array, d_inputs: _BCEInputs
) -> Array | None:
    x, y, c = _bce_upcast(inputs)
    neg_log_not_p, neg_log_p = _softplus_pair(x)
    s, not_s = _sigmoid_pair(x)
    dx, dy, dc = (_tangent(d, x.dtype, x.ndim) for d in d_inputs)
    return sum_present(
        # ∂/∂x = (1 − y)·σ(x) − c·y·σ(−x), not (1 + (c − 1)·y)·σ(x) − c·y,
        # which rounds to 0 where σ(x) rounds to y.
        None if dx is None else ((1.0 - y) * s - c * y * not_s) * dx,
        None if dy is None else (c * neg_log_p - neg_log_not_p) * dy,
        None if dc is None else y * neg_log_p * dc,
    )


_bce = with_tangent_map(_bce_of, _bce_tangent)


# ---------------------------------------------------------------------------
# Focal core.
# ---------------------------------------------------------------------------


class _SigmoidFocalInputs(NamedTuple):
    logits: Array
    labels: Array
    gamma: Array | None


def _safe_ratio(numerator: Array, denominator: Array) -> Array:
    """`numerator / denominator`, and 0 where the denominator is 0."""
    nonzero = denominator > 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1.0), 0.0)


@jax.custom_jvp
def _slope_over_u(x: Array, y: Array) -> Array:
    """`v = s(1 − s)/u = 1/(1 + (1 − y)·e^x + y·e^(−x))`, in [0, 1].

    Its own derivative rule keeps second derivatives (Hessians) finite where
    `p_t` rounds to 1: autodiff of the division would form `u²`, which
    underflows to 0 at `u` = 1e-22.
    """
    s, not_s = _sigmoid_pair(x)
    return _safe_ratio(s * not_s, (1.0 - y) * s + y * not_s)


@_slope_over_u.defjvp
def _slope_over_u_jvp(primals, tangents):
    # dv/dx = v·(1 − 2s) − (1 − 2y)·v², dv/dy = (2s − 1)·v/u: bounded where
    # the first-order terms are.
    (x, y), (dx, dy) = primals, tangents
    v = _slope_over_u(x, y)
    s, not_s = _sigmoid_pair(x)
    u = (1.0 - y) * s + y * not_s
    dv = (v * (1.0 - 2.0 * s) - (1.0 - 2.0 * y) * v * v) * dx
    return v, dv + (2.0 * s - 1.0) * _safe_ratio(v, u) * dy


def _focal_parts(inputs: _SigmoidFocalInputs, static_gamma: float | None):
    """Shared quantities: `x, y, s, 1 − s, CE, u = 1 − p_t, u^γ`."""
    dtype = compute_dtype(inputs.logits.dtype)
    x, y = inputs.logits.astype(dtype), inputs.labels.astype(dtype)
    s, not_s = _sigmoid_pair(x)
    neg_log_not_p, neg_log_p = _softplus_pair(x)
    ce = (1.0 - y) * neg_log_not_p + y * neg_log_p
    # 1 − p_t is a convex combination of s and 1 − s: no cancellation.
    u = (1.0 - y) * s + y * not_s
    modulator = focal_power(u, joined(static_gamma, inputs.gamma))
    return x, y, s, not_s, ce, u, modulator


def _focal_of(static_gamma: float | None, inputs: _SigmoidFocalInputs) -> Array:
    """Elementwise `(1 − p_t)^γ · CE(x, y)` with `1 − p_t = (1 − y)·s + y·(1 − s)`."""
    *_, ce, _, modulator = _focal_parts(inputs, static_gamma)
    return modulator * ce


def _focal_tangent(
    static_gamma: float | None,
    inputs: _SigmoidFocalInputs,
    value: Array,
    d_inputs: _SigmoidFocalInputs,
) -> Array | None:
    # d/dx: u^γ·(s − y) + γ·u^(γ−1)·(1 − 2y)·s(1 − s)·CE,
    # d/dy: −x·u^γ + γ·u^(γ−1)·(1 − 2s)·CE, d/dγ: u^γ·log(u)·CE. The u^(γ−1)
    # terms are written as u^γ · (… / u): where u underflows to 0, so do they;
    # s(1 − s)/u is `_slope_over_u`, bounded by 1.
    x, y, s, not_s, ce, u, modulator = _focal_parts(inputs, static_gamma)
    gamma = hyperparameter(joined(static_gamma, inputs.gamma), x.dtype)
    dx, dy, d_gamma = (_tangent(d, x.dtype, x.ndim) for d in d_inputs)
    log_u = jnp.log(jnp.where(u > 0, u, 1.0))
    focusing = gamma * (1.0 - 2.0 * y) * _slope_over_u(x, y) * ce
    return sum_present(
        None if dx is None else modulator * (((1.0 - y) * s - y * not_s) + focusing) * dx,
        None
        if dy is None
        else modulator * (-x + gamma * (1.0 - 2.0 * s) * _safe_ratio(ce, u)) * dy,
        None if d_gamma is None else modulator * log_u * ce * d_gamma,
    )


_focal = with_tangent_map(_focal_of, _focal_tangent)


# ---------------------------------------------------------------------------
# Public losses.
# ---------------------------------------------------------------------------


def sigmoid_binary_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    pos_weight: ArrayLike | None = None,
    where: ArrayLike | None = None,
    label_smoothing: ArrayLike = 0.0,
    reduction: Reduction = "none",
) -> Array:
    r"""Elementwise sigmoid binary cross-entropy, with positive-class weighting.

    A drop-in superset of `optax.sigmoid_binary_cross_entropy`: with only
    optax's arguments it returns optax's values and gradients. For binary and
    multi-label classification, where each entry is an independent yes/no
    decision. `pos_weight` is the `pos_weight` of TensorFlow's
    `tf.nn.weighted_cross_entropy_with_logits` and of PyTorch's
    `BCEWithLogitsLoss`; `label_smoothing` is Keras's `BinaryCrossentropy`
    smoothing towards 1/2. With $s = \sigma(x)$, pos_weight $c$ and smoothed
    label $\tilde y = (1 - \varepsilon)\,y + \varepsilon/2$:

    $$
    \ell = -\bigl(c\,\tilde y \log s + (1 - \tilde y)\log(1 - s)\bigr),
    \qquad
    \frac{\partial \ell}{\partial x} = \bigl(1 + (c - 1)\,\tilde y\bigr)\,s - c\,\tilde y .
    $$

    The effective weight of an element (the `"weighted_mean"` denominator) is
    `weights`; `pos_weight` is part of the loss, not of the denominator.
    PyTorch's `BCEWithLogitsLoss(weight=)` is a plain multiplier averaged over
    elements: that is `weights=` with `reduction="mean"`.

    Args:
      logits: floating-point logits, any shape.
      labels: targets in [0, 1] (hard or soft), broadcastable to the shape of
        `logits` (the loss shape) without enlarging it and without a last axis
        of size 1 against more labels per example. Integer or boolean labels are
        accepted and cast.
      weights: per-element multiplier broadcastable to the loss shape without
        enlarging it (a `[num_labels]` vector weights each label).
      pos_weight: weight of the positive term, broadcastable to the loss shape
        without enlarging it, typically `[num_labels]` with
        `num_negatives / num_positives` per label.
      where: bool mask broadcastable to the loss shape; masked elements give
        exactly 0 loss and 0 gradient.
      label_smoothing: $\varepsilon \in [0, 1)$, labels become
        $(1 - \varepsilon)\,y + \varepsilon/2$ (Keras).
      reduction: `"none"`, `"sum"`, `"mean"`, `"weighted_mean"` or
        `"sum_by_nonzero_weights"`, over all elements.

    Returns:
      The shape of `logits` for `reduction="none"`,
      else a scalar; float32 for half-precision logits, the logits' dtype
      otherwise.

    Raises:
      TypeError: non-floating `logits` or `pos_weight`.
      ValueError: `labels` that do not broadcast to `logits`' shape; `weights`,
        `where` or `pos_weight` that do not broadcast to the loss shape;
        `label_smoothing` outside [0, 1); an unknown `reduction`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> logits = jnp.array([[2.0, -1.0], [0.0, 3.0]])
      >>> labels = jnp.array([[1.0, 0.0], [1.0, 0.0]])
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.sigmoid_binary_cross_entropy(logits, labels))
      [[0.1269 0.3133]
       [0.6931 3.0486]]
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.sigmoid_binary_cross_entropy(
      ...         logits, labels, pos_weight=jnp.array([3.0, 1.0])))
      [[0.3808 0.3133]
       [2.0794 3.0486]]

    Notes:
      The derivative is a hand-written `jax.custom_jvp`, computed in float32
      for half-precision logits and returned in the logits' dtype, with
      cotangents for `labels` and `pos_weight` as well. Forward and reverse
      mode both work.

    References:
      TensorFlow, `tf.nn.weighted_cross_entropy_with_logits`; PyTorch,
      `torch.nn.BCEWithLogitsLoss`; Keras, `keras.losses.BinaryCrossentropy`.
    """
    _checks.check_label_smoothing(label_smoothing)
    _checks.check_reduction(reduction)
    x, y = _elementwise_inputs(logits, labels)
    if pos_weight is not None:
        pos_weight = jnp.asarray(pos_weight)
        _checks.check_floating(pos_weight, "pos_weight")
        _checks.check_broadcastable(pos_weight, x.shape, "pos_weight")
    mask = _reduction.example_mask(x.shape, where=where)
    x, y = _masked_inputs(x, y, mask)
    if not is_static_zero(label_smoothing):
        epsilon = hyperparameter(label_smoothing, y.dtype)
        y = y * (1.0 - epsilon) + 0.5 * epsilon
    loss = _bce(None, _BCEInputs(x, y, pos_weight))
    return _reduction.finish(loss, reduction, weights=weights, mask=mask)


def sigmoid_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    alpha: ArrayLike | None = None,
    gamma: ArrayLike = 2.0,
    *,
    weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> Array:
    r"""Elementwise sigmoid focal loss (Lin et al. 2017).

    A drop-in superset of `optax.sigmoid_focal_loss` (whose `alpha` and `gamma`
    are keyword-only; here they may also be passed by position, like
    torchvision's `sigmoid_focal_loss`). With $s = \sigma(x)$ and labels
    $y \in [0, 1]$:

    $$
    \ell = \alpha_t\,(1 - p_t)^{\gamma}\,\mathrm{CE}(x, y),\quad
    1 - p_t = (1 - y)\,s + y\,(1 - s),\quad
    \alpha_t = \alpha\,y + (1 - \alpha)(1 - y),
    $$

    with $\mathrm{CE}$ the sigmoid binary cross-entropy and $\alpha_t = 1$
    when `alpha` is None. The effective weight of an element is `weights`.

    Args:
      logits: floating-point logits, any shape.
      labels: targets in [0, 1], broadcastable to `logits`' shape (as above).
      alpha: weight of the positive class in (0, 1), a scalar or an array
        broadcastable to the loss shape; None for no class balancing.
      gamma: focusing exponent $\gamma \ge 0$, a Python number or a (traced)
        scalar array; $\gamma = 0$ gives the (alpha-weighted) cross-entropy.
      weights: per-element multiplier broadcastable to the loss shape.
      where: bool mask broadcastable to the loss shape; masked elements give
        exactly 0 loss and 0 gradient.
      reduction: one of the five reductions, over all elements.

    Returns:
      The shape of `logits` for `reduction="none"`,
      else a scalar; float32 for half-precision logits.

    Raises:
      TypeError: non-floating `logits`.
      ValueError: negative `gamma`; shapes that do not broadcast; an unknown
        `reduction`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> logits = jnp.array([2.0, -1.0, 0.0])
      >>> labels = jnp.array([1.0, 0.0, 1.0])
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.sigmoid_focal_loss(logits, labels))
      [0.0018 0.0227 0.1733]
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.sigmoid_focal_loss(logits, labels, alpha=0.25))
      [0.0005 0.017 0.0433]

    Notes:
      The derivative is a hand-written `jax.custom_jvp` (tangents of `logits`,
      `labels` and a traced `gamma`; `alpha` and `weights` are differentiated
      by autodiff), computed from $1 - p_t$ in the linear domain, where it is
      a convex combination of $s$ and $1 - s$ and so never cancels. Forward
      and reverse mode both work.

    References:
      Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017.
    """
    _checks.check_nonnegative(gamma, "gamma")
    _checks.check_reduction(reduction)
    x, y = _elementwise_inputs(logits, labels)
    mask = _reduction.example_mask(x.shape, where=where)
    x, y = _masked_inputs(x, y, mask)
    static_gamma, gamma_array = split_static(gamma, compute_dtype(x.dtype))
    loss = _focal(static_gamma, _SigmoidFocalInputs(x, y, gamma_array))
    if alpha is not None:
        alpha = jnp.asarray(alpha)
        _checks.check_broadcastable(alpha, x.shape, "alpha")
        alpha = expand_rank(alpha.astype(loss.dtype), x.ndim)
        y_t = y.astype(loss.dtype)
        loss = (alpha * y_t + (1.0 - alpha) * (1.0 - y_t)) * loss
    return _reduction.finish(loss, reduction, weights=weights, mask=mask)
