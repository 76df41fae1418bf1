"""The softmax cross-entropy losses: integer labels, probability labels, poly.

Each loss is the same four steps: prepare the inputs (`_inputs.py`), take the
per-row statistics from the custom-JVP core (`_core.row_stats`), combine them
into the per-example loss in plain JAX on `[batch]` vectors (here), and finish
with `_reduction.finish`. Everything linear in the per-example loss (weights,
class weights, masks, smoothing, z-loss, reductions) stays in plain JAX, so
autodiff gives the cotangents of those arguments, and traced hyperparameters
need no special case.
"""

import jax.numpy as jnp

from jwxent import _checks, _reduction
from jwxent._numerics import hyperparameter, is_static_zero
from jwxent._platform import end_row_reductions
from jwxent._softmax._core import RowStats, Target, row_stats
from jwxent._softmax._inputs import (
    IntegerLabels,
    PreparedLogits,
    check_smoothing_has_classes,
    check_smoothing_without_class_mask,
    cost_weight,
    expected_class_weight,
    prepare_integer_labels,
    prepare_probability_labels,
    probability_smoothing,
)
from jwxent._typing import Array, ArrayLike, Axis, Reduction


def check_options(label_smoothing: ArrayLike, z_loss: ArrayLike, reduction: str) -> None:
    """The checks every softmax loss shares."""
    _checks.check_label_smoothing(label_smoothing)
    _checks.check_nonnegative(z_loss, "z_loss")
    _checks.check_reduction(reduction)


def smoothing_target(labels: IntegerLabels, label_smoothing: ArrayLike) -> Target | None:
    """The `[C]` target that label smoothing spreads over (class weights or ones)."""
    if is_static_zero(label_smoothing):
        return None
    return Target(None, labels.class_weights)


def integer_label_loss(
    stats: RowStats,
    labels: IntegerLabels,
    *,
    num_classes: int,
    label_smoothing: ArrayLike,
    z_loss: ArrayLike,
) -> Array:
    """The per-example loss of integer labels from the core's statistics.

    `(1−ε)·c_y·nll + (ε/C)·Σ_k c_k·(lse − z̃_k) + λ_z·c_y·lse²`, NaN where a
    label is out of range (under `jit`). With label smoothing, `stats.dots`
    must hold `"smoothing"`, the dot with `smoothing_target(labels, label_smoothing)`.
    """
    dtype = stats.log_sum.dtype
    # Out-of-range labels under jit: NaN for that example, never a clamped value.
    nll = jnp.where(labels.valid, stats.nll, jnp.nan)
    loss = _reduction.scale(nll, labels.label_weight)
    if not is_static_zero(label_smoothing):
        epsilon = hyperparameter(label_smoothing, dtype)
        cw = labels.class_weights
        target_sum = jnp.asarray(num_classes, dtype) if cw is None else jnp.sum(cw)
        smooth = stats.cross_entropy("smoothing", target_sum)
        loss = (1.0 - epsilon) * loss + (epsilon / num_classes) * smooth
    if not is_static_zero(z_loss):
        penalty = hyperparameter(z_loss, dtype) * jnp.square(stats.lse)
        loss = loss + _reduction.scale(penalty, labels.label_weight)
    return loss


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
    label_smoothing: ArrayLike,
    z_loss: ArrayLike,
    logit_adjustment: ArrayLike | None,
    label_margins: ArrayLike | None,
    reduction: Reduction,
) -> Array:
    """Implementation of `softmax_cross_entropy_with_integer_labels`."""
    check_options(label_smoothing, z_loss, reduction)
    prepared = PreparedLogits(logits, axis, where)
    check_smoothing_without_class_mask(label_smoothing, prepared)
    targets = prepare_integer_labels(
        labels,
        batch_shape=prepared.batch_shape,
        num_classes=prepared.num_classes,
        dtype=prepared.dtype,
        row_mask=prepared.row_mask,
        class_weights=class_weights,
        ignore_index=ignore_index,
    )
    offsets = prepared.class_vector(logit_adjustment, "logit_adjustment")
    margins = label_margin_vector(label_margins, prepared)
    z, class_mask = prepared.masked_inputs(targets.mask)
    smoothing = smoothing_target(targets, label_smoothing)
    stats = row_stats(
        z,
        class_mask=class_mask,
        labels=targets.labels,
        offsets=offsets,
        margins=margins,
        targets=None if smoothing is None else {"smoothing": smoothing},
    )
    loss = integer_label_loss(
        stats,
        targets,
        num_classes=prepared.num_classes,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
    )
    cost = cost_weight(cost_matrix, prepared, z, class_mask, labels=targets.labels)
    return _reduction.finish(
        loss,
        reduction,
        weights=weights,
        mask=targets.mask,
        label_weight=targets.label_weight,
        cost=cost,
    )


def label_margin_vector(label_margins: ArrayLike | None, prepared: PreparedLogits) -> Array | None:
    """`label_margins` checked: a margin needs the label inside the softmax."""
    if label_margins is not None and prepared.logit_mask is not None:
        raise ValueError("`label_margins` cannot be combined with a logits-shaped `where`.")
    return prepared.class_vector(label_margins, "label_margins")


def _probability_label_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: Axis | None,
    where: ArrayLike | None,
    weights: ArrayLike | None,
    class_weights: ArrayLike | None,
    cost_matrix: ArrayLike | None,
    label_smoothing: ArrayLike,
    z_loss: ArrayLike,
    logit_adjustment: ArrayLike | None,
    reduction: Reduction,
    poly_epsilon: ArrayLike | None = None,
) -> Array:
    """Implementation of the probability-label softmax losses.

    With targets `t = c·q̃`, `q̃ = (1−ε)·q + ε/C`, the loss is
    `Σ_k t_k·(lse − z̃_k)`, split into the `q` part and the smoothing part so
    that neither `q̃` nor `t` is ever written out. With `poly_epsilon`, adds the
    PolyLoss term `ε_poly·Σ_k t_k·(1 − p_k)`.
    """
    check_options(label_smoothing, z_loss, reduction)
    prepared = PreparedLogits(logits, axis, where)
    check_smoothing_has_classes(label_smoothing, prepared)
    mask = prepared.row_mask
    q = prepare_probability_labels(labels, prepared, mask)
    cw = prepared.class_vector(class_weights, "class_weights")
    offsets = prepared.class_vector(logit_adjustment, "logit_adjustment")
    z, class_mask = prepared.masked_inputs(mask)
    smoothed = not is_static_zero(label_smoothing)
    spread, class_sum = probability_smoothing(prepared, cw)
    targets = {"labels": Target(q, cw)} | ({"smoothing": spread} if smoothed else {})
    with_poly = poly_epsilon is not None
    stats = row_stats(
        z, class_mask=class_mask, offsets=offsets, targets=targets, with_prob_dots=with_poly
    )
    dtype = prepared.dtype
    label_weight = expected_class_weight(q, cw, dtype)
    mass = label_weight
    if mass is None:
        mass = end_row_reductions(jnp.sum(q, axis=-1, dtype=dtype))
    loss = stats.cross_entropy("labels", mass)
    poly = None if not with_poly else mass - stats.prob_dots["labels"]
    if smoothed:
        epsilon = hyperparameter(label_smoothing, dtype)
        share = epsilon / prepared.num_classes
        loss = (1.0 - epsilon) * loss + share * stats.cross_entropy("smoothing", class_sum)
        if poly is not None:
            poly = (1.0 - epsilon) * poly + share * (class_sum - stats.prob_dots["smoothing"])
    if poly is not None and poly_epsilon is not None:
        loss = loss + hyperparameter(poly_epsilon, dtype) * poly
    if not is_static_zero(z_loss):
        penalty = hyperparameter(z_loss, dtype) * jnp.square(stats.lse)
        loss = loss + _reduction.scale(penalty, label_weight)
    cost = cost_weight(cost_matrix, prepared, z, class_mask, probabilities=q)
    return _reduction.finish(
        loss, reduction, weights=weights, mask=mask, label_weight=label_weight, cost=cost
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
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    logit_adjustment: ArrayLike | None = None,
    label_margins: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> Array:
    r"""Softmax cross-entropy with integer labels and class weighting.

    A drop-in superset of `optax.softmax_cross_entropy_with_integer_labels`:
    with only optax's arguments it returns optax's values and gradients. The
    keyword-only extras give PyTorch's `F.cross_entropy(weight=, ignore_index=,
    label_smoothing=)`, TensorFlow's `weights=tf.gather(class_weights, labels)`,
    Keras's `sample_weight`, cost-sensitive weighting by the predicted label,
    PaLM's z-loss, and the long-tail losses: logit adjustment (balanced
    softmax) and LDAM label margins. The label's logit is picked without
    building a one-hot.

    Per example, with $\tilde z = z + \delta$ (the logit adjustment) and the
    label's own logit lowered by its margin, $\tilde z_y = z_y + \delta_y - m_y$,
    $p = \mathrm{softmax}(\tilde z)$, $c_k$ the class weights (1 without
    `class_weights`), $\varepsilon$ the label smoothing and $C$ the number of
    classes:

    $$
    \ell = (1-\varepsilon)\,c_y\,(-\log p_y)
      + \frac{\varepsilon}{C}\sum_k c_k\,(-\log p_k)
      + \lambda_z\,c_y\,\bigl(\log\textstyle\sum_k e^{\tilde z_k}\bigr)^2 ,
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
      label_smoothing: $\varepsilon \in [0, 1)$, PyTorch semantics; a Python
        number or a (traced) scalar array.
      z_loss: $\lambda_z \ge 0$, adds $\lambda_z\,c_y\,\mathrm{lse}^2$ per
        example; a Python number or a (traced) scalar array.
      logit_adjustment: `[num_classes]` offsets $\delta$ added to every logit
        inside the softmax only (Menon et al. 2021; $\delta = \tau\log\pi$,
        e.g. from `logit_adjustment_from_counts`; $\tau = 1$ is the balanced
        softmax of Ren et al. 2020).
      label_margins: `[num_classes]` margins $m$; $m_y$ is subtracted from the
        label's own logit (LDAM, Cao et al. 2019, e.g. from `ldam_margins`;
        scale the logits and the margins by LDAM's $s$ yourself).
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
      The derivative is a hand-written `jax.custom_jvp` whose tangent map XLA
      transposes into the fused backward pass `w·(softmax(z̃) − target)`,
      computed from the logits and two numbers per example (the row's shift
      and log-sum). Forward and reverse mode, `vmap`, `jax.hessian` and
      traced hyperparameters all work.
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
        logit_adjustment=logit_adjustment,
        label_margins=label_margins,
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
    cost_matrix: ArrayLike | None = None,
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    logit_adjustment: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> Array:
    r"""Softmax cross-entropy with probability (or one-hot) labels.

    A drop-in superset of `optax.softmax_cross_entropy`. Class weights are
    applied inside the sum over classes, as PyTorch's `weight=` does with
    probability targets. With $p = \mathrm{softmax}(z + \delta)$:

    $$
    \ell = -\sum_k c_k\,\tilde q_k \log p_k,\qquad
    \tilde q = (1-\varepsilon)\,q + \varepsilon / C,
    $$

    plus $\lambda_z\,w_q\,\mathrm{lse}^2$ with z-loss. The example's weight for
    the `"weighted_mean"` denominator is $w_q = \text{weights}\cdot\sum_k c_k q_k$
    (just `weights` without `class_weights`), times
    $\sum_y q_y M_{y,\arg\max z}$ with a cost matrix. A target of 0 on a logit
    of `-inf` contributes 0 (the `0·log 0 = 0` convention of
    `safe_softmax_cross_entropy`).

    Args:
      logits: `[*batch, num_classes]` floating point.
      labels: probabilities broadcastable to `logits.shape`.
      axis: class axis or tuple of axes (or None for all), as in optax.
      where: bool `[*batch]` example mask or logits-shaped class mask (optax).
      weights: per-example multiplier broadcastable to `[*batch]`.
      class_weights: `[num_classes]`.
      cost_matrix: `[num_classes, num_classes]`; the example is weighted by
        $\sum_y q_y M_{y,\arg\max z}$ (argmax under `stop_gradient`).
      label_smoothing: $\varepsilon \in [0, 1)$ (may be traced).
      z_loss: $\lambda_z \ge 0$ (may be traced).
      logit_adjustment: `[num_classes]` offsets $\delta$ added inside the
        softmax only.
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
      The derivative is the softmax core's `jax.custom_jvp`:
      `dz = g·(Σ_k t_k·softmax(z̃) − t)` with `t = c·q̃`, formed inside the
      backward pass without writing `t` out; the cotangent of `labels` is
      returned too. Forward and reverse mode both work.
    """
    return _probability_label_loss(
        logits,
        labels,
        axis=axis,
        where=where,
        weights=weights,
        class_weights=class_weights,
        cost_matrix=cost_matrix,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        logit_adjustment=logit_adjustment,
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
    cost_matrix: ArrayLike | None = None,
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    logit_adjustment: ArrayLike | None = None,
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
        cost_matrix=cost_matrix,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        logit_adjustment=logit_adjustment,
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
    cost_matrix: ArrayLike | None = None,
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    logit_adjustment: ArrayLike | None = None,
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
      epsilon: coefficient of the first polynomial term (2.0 for ImageNet); a
        Python number or a (traced) scalar array.
      axis: class axis or tuple of axes, as in `softmax_cross_entropy`.
      where: example or class mask, as in `softmax_cross_entropy`.
      weights: per-example multiplier broadcastable to `[*batch]`.
      class_weights: `[num_classes]`, applied inside both sums.
      cost_matrix: as in `softmax_cross_entropy`.
      label_smoothing: $\varepsilon \in [0, 1)$, smooths the targets of both terms.
      z_loss: $\lambda_z \ge 0$.
      logit_adjustment: `[num_classes]` offsets added inside the softmax.
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
    _checks.check_hyperparameter(epsilon, "epsilon", minimum=-float("inf"))
    return _probability_label_loss(
        logits,
        labels,
        axis=axis,
        where=where,
        weights=weights,
        class_weights=class_weights,
        cost_matrix=cost_matrix,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        logit_adjustment=logit_adjustment,
        reduction=reduction,
        poly_epsilon=epsilon,
    )
