"""Probability-input losses: Keras's `from_logits=False` cross-entropies.

These follow Keras 3 (`keras/src/backend/jax/nn.py`, `categorical_crossentropy`
and `binary_crossentropy`, and `keras/src/losses/losses.py`):

* categorical: `output = probs / sum(probs, axis)`, then
  `clip(output, ε, 1 − ε)`, then `−Σ target·log(output)`;
* binary: `clip(probs, ε, 1 − ε)`, then
  `−(target·log(output) + (1 − target)·log(1 − output))`, then the mean over
  the last axis (so one loss per example);
* label smoothing: `y·(1 − ε) + ε / C` (categorical), `y·(1 − ε) + ε / 2`
  (binary).

The clip bounds are Python floats converted to the compute dtype, exactly as
`jnp.clip` converts Keras's `1.0 - backend.epsilon()`: in float32, `1 − 1e-7`
rounds to `1 − 2⁻²³`, so the largest binary loss term is `−log(2⁻²³) ≈ 15.94`
on one side and `−log(1e-7) ≈ 16.12` on the other, as in Keras. Half-precision
inputs are computed in float32 (Keras would clip in bfloat16, where `1 − 1e-7`
is 1 and the loss can be infinite).

Gradients are plain autodiff of the clipped formula, which XLA fuses into one
elementwise pass: the gradient is 0 with respect to a probability that was
clipped, as in Keras. No custom derivative rule is needed because there is no log-sum-exp
to stabilise and no large intermediate to avoid.
"""

import jax.numpy as jnp

from jwxent import _checks, _reduction
from jwxent._numerics import (
    class_vector,
    compute_dtype,
    expand_rank,
    hyperparameter,
    is_static_zero,
)
from jwxent._typing import Array, ArrayLike, Reduction


def _probabilities(probs: ArrayLike, axis: int) -> Array:
    """`probs` validated, with `axis` moved last."""
    probs = jnp.asarray(probs)
    _checks.check_floating(probs, "probs")
    if probs.ndim == 0:
        raise ValueError("`probs` must have a class axis; got a scalar.")
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"`axis` must be an int; got {type(axis)}.")
    if not -probs.ndim <= axis < probs.ndim:
        raise ValueError(f"`axis` {axis} is out of bounds for probs of rank {probs.ndim}.")
    return jnp.moveaxis(probs, axis, -1)


def _companion(x: ArrayLike, shape: tuple[int, ...], axis: int, name: str, dtype) -> Array:
    """`x` broadcast to `shape` (that of `probs` as given), `axis` moved last, in `dtype`."""
    x = jnp.asarray(x)
    _checks.check_labels_broadcastable(x, shape, (axis,), name, against="probs")
    return jnp.moveaxis(jnp.broadcast_to(x, shape), axis, -1).astype(dtype)


def _clip(p: Array, epsilon: ArrayLike) -> Array:
    """Keras's `clip(p, ε, 1 − ε)`, the bounds rounded to `p.dtype` as `jnp.clip` does."""
    low = jnp.asarray(epsilon, p.dtype)
    high = jnp.asarray(1.0 - epsilon, p.dtype)
    return jnp.clip(p, low, high)


def _neutral_rows(p: Array, mask: Array | None, fill: float) -> Array:
    """Masked rows replaced by `fill` so that nothing non-finite reaches the gradient."""
    if mask is None:
        return p
    return jnp.where(mask[..., None], p, jnp.full_like(p, fill))


def categorical_cross_entropy(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    epsilon: ArrayLike = 1e-7,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    class_weights: ArrayLike | None = None,
    label_smoothing: ArrayLike = 0.0,
    reduction: Reduction = "none",
) -> Array:
    r"""Categorical cross-entropy of predicted probabilities (Keras `from_logits=False`).

    Keras 3's `keras.losses.categorical_crossentropy` for probabilities:
    `probs` are renormalised along the class axis and clipped to
    $[\epsilon, 1 - \epsilon]$ before the logarithm. With
    $\hat p = \mathrm{clip}(p / \sum_k p_k,\ \epsilon,\ 1 - \epsilon)$, class
    weights $c_k$ and smoothed labels
    $\tilde q = (1 - \varepsilon)\,q + \varepsilon / C$:

    $$
    \ell = -\sum_k c_k\,\tilde q_k \log \hat p_k .
    $$

    `reduction="mean"` with `weights=` is Keras's default
    `sum_over_batch_size` with `sample_weight`. The example's weight for
    `"weighted_mean"` is $\text{weights}\cdot\sum_k c_k q_k$, as in
    `softmax_cross_entropy`. Prefer `softmax_cross_entropy` on logits when you
    have them: it is exact where this one clips.

    Args:
      probs: `[*batch, num_classes]` floating-point probabilities (the class
        axis is `axis`); they need not sum to 1, but a row that sums to 0 gives
        NaN, as in Keras.
      labels: target probabilities broadcastable to `probs.shape` without a
        class axis of size 1 against more classes.
      axis: the class axis.
      epsilon: the clip margin $\epsilon \in [0, 0.5)$, Keras's
        `backend.epsilon()` by default.
      where: bool `[*batch]` mask; masked examples give exactly 0 loss and 0
        gradient.
      weights: per-example multiplier broadcastable to `[*batch]` (Keras
        `sample_weight`).
      class_weights: `[num_classes]`, applied inside the sum over classes.
      label_smoothing: $\varepsilon \in [0, 1)$ (Keras).
      reduction: `"none"`, `"sum"`, `"mean"`, `"weighted_mean"` or
        `"sum_by_nonzero_weights"`.

    Returns:
      `[*batch]` for `reduction="none"`, else a scalar; float32 for
      half-precision `probs`, their dtype otherwise.

    Raises:
      TypeError: non-floating `probs`, a non-int `axis`.
      ValueError: shapes that do not broadcast, `epsilon` outside [0, 0.5),
        bad options.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> labels = jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
      >>> probs = jnp.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.categorical_cross_entropy(probs, labels))
      [0.0513 2.3026]

    Notes:
      Plain autodiff of the clipped formula (see the module notes): the
      gradient with respect to a clipped probability is 0. Forward and reverse
      mode both work.

    References:
      Keras 3, `keras.losses.CategoricalCrossentropy` and
      `keras/src/backend/jax/nn.py`.
    """
    _checks.check_label_smoothing(label_smoothing)
    _checks.check_reduction(reduction)
    _checks.check_clip_epsilon(epsilon)
    probs = jnp.asarray(probs)
    p = _probabilities(probs, axis)
    dtype = compute_dtype(p.dtype)
    q = _companion(labels, probs.shape, axis, "labels", dtype)
    num_classes = p.shape[-1]
    mask = _reduction.example_mask(p.shape[:-1], where=where)
    p = _neutral_rows(p.astype(dtype), mask, 1.0)
    q = _neutral_rows(q, mask, 0.0)
    p_hat = _clip(p / jnp.sum(p, axis=-1, keepdims=True), epsilon)
    targets = q
    if not is_static_zero(label_smoothing):
        smoothing = hyperparameter(label_smoothing, dtype)
        targets = (1.0 - smoothing) * targets + smoothing / num_classes
    label_weight = None
    cw = class_vector(class_weights, num_classes, dtype, "class_weights")
    if cw is not None:
        cw = expand_rank(cw, q.ndim)
        targets = cw * targets
        label_weight = jnp.sum(cw * q, axis=-1)
    loss = -jnp.sum(targets * jnp.log(p_hat), axis=-1)
    return _reduction.finish(loss, reduction, weights=weights, mask=mask, label_weight=label_weight)


def binary_cross_entropy(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    epsilon: ArrayLike = 1e-7,
    pos_weight: ArrayLike | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    label_smoothing: ArrayLike = 0.0,
    reduction: Reduction = "none",
) -> Array:
    r"""Binary cross-entropy of predicted probabilities, averaged over the last axis.

    Keras 3's `keras.losses.binary_crossentropy` for probabilities (its
    `BinaryCrossentropy(from_logits=False)`): `probs` are clipped to
    $[\epsilon, 1 - \epsilon]$, the elementwise cross-entropy is taken, and
    the result is **averaged over the last axis**, so there is one loss per
    example and `weights` are per example, exactly Keras's `sample_weight`.
    For `N` binary examples pass `[N, 1]` arrays, as in Keras. With
    $\hat p = \mathrm{clip}(p, \epsilon, 1 - \epsilon)$, pos_weight $c$ and
    $\tilde y = (1 - \varepsilon)\,y + \varepsilon / 2$, over the last axis of
    size $L$:

    $$
    \ell = -\frac{1}{L}\sum_{j=1}^{L}
      \bigl(c_j\,\tilde y_j \log \hat p_j + (1 - \tilde y_j)\log(1 - \hat p_j)\bigr).
    $$

    `reduction="mean"` with `weights=` equals Keras's default
    `sum_over_batch_size` with `sample_weight`; Keras's `class_weight=` in
    `fit` is `weights=class_weight[label]`. The effective weight for
    `"weighted_mean"` is `weights`. (`sigmoid_binary_cross_entropy`, on
    logits, is elementwise like optax and PyTorch instead.)

    Args:
      probs: `[*batch, L]` floating-point probabilities.
      labels: targets in [0, 1] broadcastable to `probs.shape`, without a
        last axis of size 1 against more labels per example.
      epsilon: the clip margin $\epsilon \in [0, 0.5)$.
      pos_weight: weight of the positive term, broadcastable to `probs.shape`
        (TF / PyTorch `pos_weight`; Keras has none).
      where: bool `[*batch]` mask; masked examples give exactly 0 loss and 0
        gradient.
      weights: per-example multiplier broadcastable to `[*batch]`.
      label_smoothing: $\varepsilon \in [0, 1)$ (Keras).
      reduction: one of the five reductions.

    Returns:
      `[*batch]` = `probs.shape[:-1]` for `reduction="none"`, else a scalar;
      float32 for half-precision `probs`.

    Raises:
      TypeError: non-floating `probs` or `pos_weight`.
      ValueError: shapes that do not broadcast, `epsilon` outside [0, 0.5),
        bad options.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> labels = jnp.array([[0.0, 1.0], [0.0, 0.0]])
      >>> probs = jnp.array([[0.6, 0.4], [0.4, 0.6]])
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.binary_cross_entropy(probs, labels))
      [0.9163 0.7136]
      >>> print(jwxent.binary_cross_entropy(probs, labels, weights=jnp.array([1.0, 3.0]),
      ...                                   reduction="mean"))
      1.5285

    Notes:
      Plain autodiff of the clipped formula (see the module notes): the
      gradient with respect to a clipped probability is 0.

    References:
      Keras 3, `keras.losses.BinaryCrossentropy` and
      `keras/src/backend/jax/nn.py`.
    """
    _checks.check_label_smoothing(label_smoothing)
    _checks.check_reduction(reduction)
    _checks.check_clip_epsilon(epsilon)
    p = _probabilities(probs, -1)
    dtype = compute_dtype(p.dtype)
    y = _companion(labels, p.shape, -1, "labels", dtype)
    mask = _reduction.example_mask(p.shape[:-1], where=where)
    p = _clip(_neutral_rows(p.astype(dtype), mask, 0.5), epsilon)
    y = _neutral_rows(y, mask, 0.0)
    if not is_static_zero(label_smoothing):
        smoothing = hyperparameter(label_smoothing, dtype)
        y = (1.0 - smoothing) * y + 0.5 * smoothing
    positive = y * jnp.log(p)
    if pos_weight is not None:
        pos_weight = jnp.asarray(pos_weight)
        _checks.check_floating(pos_weight, "pos_weight")
        _checks.check_broadcastable(pos_weight, p.shape, "pos_weight")
        positive = expand_rank(pos_weight.astype(dtype), p.ndim) * positive
    loss = -jnp.mean(positive + (1.0 - y) * jnp.log(1.0 - p), axis=-1)
    return _reduction.finish(loss, reduction, weights=weights, mask=mask)
