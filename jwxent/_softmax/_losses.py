"""The softmax cross-entropy losses: integer labels, probability labels, poly.

Each public loss packs its keywords into one `Options` value and runs the
pipeline of `_pipeline.py`: prepare the inputs, take the per-row statistics
from the custom-JVP core (`_core.row_stats`), form the loss's per-row term in
plain JAX on `[batch]` vectors, and finish. Everything linear in the per-example loss (weights,
class weights, masks, smoothing, z-loss, reductions) stays in plain JAX, so
autodiff gives the cotangents of those arguments, and traced hyperparameters
need no special case.
"""

from jwxent._softmax._core import Target
from jwxent._softmax._options import Options
from jwxent._softmax._pipeline import (
    finish,
    integer_cross_entropy,
    prepare_integer,
    prepare_probability,
    probability_cross_entropy,
    smoothing,
    statistics,
)
from jwxent._typing import Array, ArrayLike, Axis, Reduction


def _integer_label_loss(
    logits: ArrayLike, labels: ArrayLike, axis: Axis, where: ArrayLike | None, options: Options
) -> Array:
    """The integer-label softmax cross-entropy through the pipeline."""
    prepared = prepare_integer(logits, labels, axis, where, options)
    spread, total = smoothing(prepared) if options.smoothed else (None, None)
    stats = statistics(prepared, None if spread is None else {"smoothing": spread})
    loss = integer_cross_entropy(
        stats, prepared.label_weight, total, options.label_smoothing, prepared.num_classes
    )
    return finish(loss, stats, prepared, options)


def _probability_label_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: Axis | None,
    where: ArrayLike | None,
    options: Options,
) -> Array:
    """The probability-label softmax losses (and PolyLoss) through the pipeline.

    With targets `t = c·q̃`, `q̃ = (1−ε)·q + ε/C`, the loss is
    `Σ_k t_k·(lse − z̃_k)`, split into the `q` part and the smoothing part so
    that neither `q̃` nor `t` is ever written out.
    """
    prepared = prepare_probability(logits, labels, axis, where, options)
    targets = {"labels": Target(prepared.probabilities, prepared.class_weights)}
    total = None
    if options.smoothed:
        targets["smoothing"], total = smoothing(prepared)
    stats = statistics(prepared, targets, with_prob_dots=options.poly_epsilon is not None)
    if prepared.class_weights is not None:  # the label weight from the dots' pass
        prepared = prepared._replace(label_weight=stats.masses["labels"])
    loss = probability_cross_entropy(stats, prepared, total, options)
    return finish(loss, stats, prepared, options)


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
    options = Options.of(locals())
    return _integer_label_loss(logits, labels, axis, where, options)


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
    options = Options.of(locals())
    return _probability_label_loss(logits, labels, axis, where, options)


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
    return _probability_label_loss(logits, labels, axis, where, Options.of(locals()))


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
    options = Options.of(locals(), poly_epsilon=epsilon)
    return _probability_label_loss(logits, labels, axis, where, options)
