"""Sigmoid family: independent binary decisions (binary and multi-label losses).

Both losses are elementwise, like optax's and PyTorch's: the loss has the
broadcast shape of `logits` and `labels`, and `weights` / `where` broadcast to
that shape without enlarging it. Each has a small custom-VJP core that returns
the unweighted elementwise loss; `weights`, `alpha`, label smoothing, masks and
reductions stay outside it in plain JAX, so autodiff composes with them.

With $s = \\sigma(x)$, $\\log s = -\\operatorname{softplus}(-x)$ and
$\\log(1 - s) = -\\operatorname{softplus}(x)$ are used throughout, so the losses
and their gradients are finite for logits of any finite size.
"""

import functools
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np

from jwxent import _checks, _reduction
from jwxent._softmax import compute_dtype
from jwxent._typing import Array, ArrayLike, Reduction

# ---------------------------------------------------------------------------
# Shared preparation.
# ---------------------------------------------------------------------------


def _unbroadcast(x: Array, shape: tuple[int, ...]) -> Array:
    """Sums `x` over the axes that broadcasting added to an array of `shape`."""
    leading = x.ndim - len(shape)
    x = jnp.sum(x, axis=tuple(range(leading))) if leading else x
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    return jnp.sum(x, axis=stretched, keepdims=True) if stretched else x


def expand_rank(x: Array, ndim: int) -> Array:
    """`x` with leading size-1 axes up to `ndim`, so it broadcasts in a product.

    Cheaper than `broadcast_to` the full shape: no replicated copy is made, and
    under sharding the small array's cotangent is a reduction, not an all-gather.
    """
    return x.reshape((1,) * (ndim - x.ndim) + x.shape)


def _elementwise_inputs(logits: ArrayLike, labels: ArrayLike) -> tuple[Array, Array]:
    """`logits` and float `labels`, validated and broadcast to their common shape.

    Integer or boolean labels become floats of the compute dtype; floating
    labels keep their dtype so that their cotangent comes back in it.
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _checks.check_floating(logits, "logits")
    try:
        shape = np.broadcast_shapes(logits.shape, labels.shape)
    except ValueError:
        raise ValueError(
            f"`labels` of shape {labels.shape} does not broadcast with `logits` of "
            f"shape {logits.shape}."
        ) from None
    if not jnp.issubdtype(labels.dtype, jnp.floating):
        labels = labels.astype(compute_dtype(logits.dtype))
    return jnp.broadcast_to(logits, shape), jnp.broadcast_to(labels, shape)


def _masked_inputs(logits: Array, labels: Array, mask: Array | None) -> tuple[Array, Array]:
    """Zeroes masked logits and labels so nothing non-finite reaches the gradient."""
    if mask is None:
        return logits, labels
    return (
        jnp.where(mask, logits, jnp.zeros_like(logits)),
        jnp.where(mask, labels, jnp.zeros_like(labels)),
    )


def _weighted_reduce(
    loss: Array, weights: ArrayLike | None, mask: Array | None, reduction: Reduction
) -> Array:
    """Applies the per-element `weights` and reduces; `weights` is the effective weight."""
    weight = _reduction.example_weights(weights, loss.shape, loss.dtype)
    return _reduction.reduce_loss(
        _reduction.scale(loss, weight), reduction, mask=mask, weight=weight
    )


def _softplus_pair(x: Array) -> tuple[Array, Array]:
    """`(softplus(x), softplus(-x))` = `(−log(1 − σ(x)), −log σ(x))`."""
    return jax.nn.softplus(x), jax.nn.softplus(-x)


# ---------------------------------------------------------------------------
# Binary cross-entropy core.
# ---------------------------------------------------------------------------


@jax.custom_vjp
def _bce(logits: Array, labels: Array, pos_weight: Array | None) -> Array:
    """Elementwise `(1 − y)·softplus(x) + c·y·softplus(−x)`, `c = pos_weight` or 1.

    Args:
      logits: floating point, the loss shape.
      labels: floating point, the loss shape.
      pos_weight: floating point broadcastable to the loss shape, or None.

    Returns:
      The loss shape, in the compute dtype of `logits`.
    """
    return _bce_fwd(logits, labels, pos_weight)[0]


def _bce_upcast(logits, labels, pos_weight):
    dtype = compute_dtype(logits.dtype)
    x, y = logits.astype(dtype), labels.astype(dtype)
    c = jnp.ones((), dtype) if pos_weight is None else pos_weight.astype(dtype)
    return x, y, expand_rank(c, x.ndim)


def _bce_fwd(logits, labels, pos_weight):
    x, y, c = _bce_upcast(logits, labels, pos_weight)
    neg_log_not_p, neg_log_p = _softplus_pair(x)
    loss = (1.0 - y) * neg_log_not_p + c * y * neg_log_p
    # Residuals are the inputs themselves; σ and softplus are recomputed.
    return loss, (logits, labels, pos_weight)


def _bce_bwd(residuals, g):
    logits, labels, pos_weight = residuals
    x, y, c = _bce_upcast(logits, labels, pos_weight)
    neg_log_not_p, neg_log_p = _softplus_pair(x)
    d_logits = g * ((1.0 + (c - 1.0) * y) * jax.nn.sigmoid(x) - c * y)
    d_labels = g * (c * neg_log_p - neg_log_not_p)
    d_pos_weight = None
    if pos_weight is not None:
        d_pos_weight = _unbroadcast(g * y * neg_log_p, pos_weight.shape).astype(pos_weight.dtype)
    return d_logits.astype(logits.dtype), d_labels.astype(labels.dtype), d_pos_weight


_bce.defvjp(_bce_fwd, _bce_bwd)


# ---------------------------------------------------------------------------
# Focal core.
# ---------------------------------------------------------------------------


def _safe_ratio(numerator: Array, denominator: Array) -> Array:
    """`numerator / denominator`, and 0 where the denominator is 0."""
    nonzero = denominator > 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1.0), 0.0)


def _focal_parts(logits, labels, gamma):
    """Shared forward quantities: `x, y, s, 1 − s, CE, u = 1 − p_t, u^γ`."""
    dtype = compute_dtype(logits.dtype)
    x, y = logits.astype(dtype), labels.astype(dtype)
    s, not_s = jax.nn.sigmoid(x), jax.nn.sigmoid(-x)
    neg_log_not_p, neg_log_p = _softplus_pair(x)
    ce = (1.0 - y) * neg_log_not_p + y * neg_log_p
    # 1 − p_t is a convex combination of s and 1 − s: no cancellation.
    u = (1.0 - y) * s + y * not_s
    modulator = jnp.ones_like(u) if gamma == 0 else u**gamma
    return x, y, s, not_s, ce, u, modulator


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _focal(gamma: float, logits: Array, labels: Array) -> Array:
    """Elementwise `(1 − p_t)^γ · CE(x, y)` with `1 − p_t = (1 − y)·s + y·(1 − s)`.

    Args:
      gamma: static focusing parameter, `>= 0`.
      logits: floating point, the loss shape.
      labels: floating point, the loss shape.

    Returns:
      The loss shape, in the compute dtype of `logits`.
    """
    return _focal_fwd(gamma, logits, labels)[0]


def _focal_fwd(gamma, logits, labels):
    *_, ce, _, modulator = _focal_parts(logits, labels, gamma)
    return modulator * ce, (logits, labels)


def _focal_bwd(gamma, residuals, g):
    logits, labels = residuals
    x, y, s, not_s, ce, u, modulator = _focal_parts(logits, labels, gamma)
    # d/dx: u^γ·(s − y) + γ·u^(γ−1)·(1 − 2y)·s(1 − s)·CE, and
    # d/dy: −x·u^γ + γ·u^(γ−1)·(1 − 2s)·CE. The u^(γ−1) terms are written as
    # u^γ · (… / u): where u underflows to 0, u^γ is 0 and so are they.
    d_logits = modulator * (s - y)
    d_labels = -x * modulator
    if gamma != 0:
        ce_over_u = _safe_ratio(ce, u)
        d_logits = d_logits + gamma * modulator * (1.0 - 2.0 * y) * s * not_s * ce_over_u
        d_labels = d_labels + gamma * modulator * (1.0 - 2.0 * s) * ce_over_u
    return (g * d_logits).astype(logits.dtype), (g * d_labels).astype(labels.dtype)


_focal.defvjp(_focal_fwd, _focal_bwd)


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
    label_smoothing: float = 0.0,
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
      labels: targets in [0, 1] (hard or soft), broadcastable with `logits`;
        the loss has their broadcast shape. Integer or boolean labels are
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
      The broadcast shape of `logits` and `labels` for `reduction="none"`,
      else a scalar; float32 for half-precision logits, the logits' dtype
      otherwise.

    Raises:
      TypeError: non-floating `logits` or `pos_weight`.
      ValueError: `labels` that do not broadcast with `logits`; `weights`,
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
      The gradient is a hand-written `jax.custom_vjp`, computed in float32 for
      half-precision logits and returned in the logits' dtype, with cotangents
      for `labels` and `pos_weight` as well. Reverse mode only: `jax.jvp` /
      `jax.jacfwd` are not supported.

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
    if label_smoothing:
        y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return _weighted_reduce(_bce(x, y, pos_weight), weights, mask, reduction)


def sigmoid_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    alpha: ArrayLike | None = None,
    gamma: float = 2.0,
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
      labels: targets in [0, 1], broadcastable with `logits`.
      alpha: weight of the positive class in (0, 1), a scalar or an array
        broadcastable to the loss shape; None for no class balancing.
      gamma: focusing exponent $\gamma \ge 0$, a Python number (static under
        `jit`); $\gamma = 0$ gives the (alpha-weighted) cross-entropy.
      weights: per-element multiplier broadcastable to the loss shape.
      where: bool mask broadcastable to the loss shape; masked elements give
        exactly 0 loss and 0 gradient.
      reduction: one of the five reductions, over all elements.

    Returns:
      The broadcast shape of `logits` and `labels` for `reduction="none"`,
      else a scalar; float32 for half-precision logits.

    Raises:
      TypeError: non-floating `logits`; a traced `gamma`.
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
      The gradient is a hand-written `jax.custom_vjp` (cotangents for `logits`
      and `labels`; `alpha` and `weights` are differentiated by autodiff),
      computed from $1 - p_t$ in the linear domain, where it is a convex
      combination of $s$ and $1 - s$ and so never cancels. Reverse mode only.

    References:
      Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017.
    """
    gamma = _checks.static_gamma(gamma)
    _checks.check_reduction(reduction)
    x, y = _elementwise_inputs(logits, labels)
    mask = _reduction.example_mask(x.shape, where=where)
    x, y = _masked_inputs(x, y, mask)
    loss = cast(Array, _focal(gamma, x, y))
    if alpha is not None:
        alpha = jnp.asarray(alpha)
        _checks.check_broadcastable(alpha, x.shape, "alpha")
        alpha = expand_rank(alpha.astype(loss.dtype), x.ndim)
        y_t = y.astype(loss.dtype)
        loss = (alpha * y_t + (1.0 - alpha) * (1.0 - y_t)) * loss
    return _weighted_reduce(loss, weights, mask, reduction)
