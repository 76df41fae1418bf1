"""References: the executable definition of every keyword in `docs/semantics.md`.

Written from the formulas in the docs, never from the library's code, and
independent of jwxent. Every loss reference takes an array module `xp`:

* `xp=np` (the default): NumPy in float64, the value reference;
* `xp=jnp` under `jax.enable_x64(True)`: the same formula in plain JAX, the
  autodiff twin that gradients, forward mode and Hessians are checked against.

The formulas are written so that autodiff of them is finite wherever the loss
is (the double-`where` trick around `0·log 0`). Class axis last everywhere;
`where` is a batch-shaped mask or, for the softmax family, a logits-shaped
class mask (optax), like jwxent's.
"""

from typing import Any, NamedTuple

import numpy as np

# ---------------------------------------------------------------------------
# Shared pieces.
# ---------------------------------------------------------------------------


def _f64(x, xp):
    return xp.asarray(x, dtype=xp.float64)


def _rows(vector, ndim, xp):
    """A `[C]` vector reshaped to broadcast against `[..., C]` (explicit rank)."""
    return xp.reshape(vector, (1,) * (ndim - 1) + (-1,))


def _batch(x, shape, xp, dtype=None):
    """`x` (or ones) broadcast to the batch shape, in float64 unless `dtype`."""
    if x is None:
        return xp.ones(shape, dtype or xp.float64)
    x = xp.asarray(x) if dtype else _f64(x, xp)
    x = xp.reshape(x, (1,) * (len(shape) - np.ndim(x)) + tuple(np.shape(x)))
    return xp.broadcast_to(x, shape)


def reduce(values, reduction, mask=None, weight=None, *, xp=np):
    """`docs/semantics.md` "Reductions": masked, weighted; a zero denominator gives 0."""
    values = _f64(values, xp)
    mask = _batch(mask, values.shape, xp, dtype=bool)
    weight = _batch(weight, values.shape, xp)
    values = xp.where(mask, values, 0.0)
    if reduction == "none":
        return values
    total = xp.sum(values)
    masked_weight = xp.where(mask, weight, 0.0)
    denominator = {
        "sum": xp.ones((), xp.float64),
        "mean": xp.sum(mask.astype(xp.float64)),
        "weighted_mean": xp.sum(masked_weight),
        "sum_by_nonzero_weights": xp.sum((masked_weight != 0).astype(xp.float64)),
    }[reduction]
    safe = xp.where(denominator == 0, 1.0, denominator)
    return xp.where(denominator == 0, 0.0, total / safe)


def _present(value):
    """Whether a term with this coefficient is there (a Python 0 leaves it out)."""
    return not isinstance(value, int | float) or value != 0


def _safe_product(t, x, xp):
    """`t·x` with `0·x = 0` even where `x` is infinite, in value and in gradient."""
    zero = t == 0
    return xp.where(zero, 0.0, t * xp.where(zero, 0.0, x))


# ---------------------------------------------------------------------------
# Softmax family (`docs/semantics.md`: the softmax losses, keywords).
# ---------------------------------------------------------------------------


def log_softmax(logits, class_mask=None, *, xp=np):
    """log-softmax over the last axis, restricted to `class_mask` (−inf elsewhere)."""
    z = _f64(logits, xp)
    if class_mask is not None:
        z = xp.where(class_mask, z, -xp.inf)
    shift = xp.max(z, axis=-1, keepdims=True)
    shifted = z - shift
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def logsumexp(logits, class_mask=None, *, xp=np):
    z = _f64(logits, xp)
    if class_mask is not None:
        z = xp.where(class_mask, z, -xp.inf)
    shift = xp.max(z, axis=-1, keepdims=True)
    return (shift + xp.log(xp.sum(xp.exp(z - shift), axis=-1, keepdims=True)))[..., 0]


class _Softmax:
    """The pieces every softmax-family reference shares: masks and adjusted logits."""

    def __init__(self, logits, labels_shape, where, class_mask, xp):
        self.xp = xp
        z = _f64(logits, xp)
        if where is not None and np.ndim(where) == z.ndim:
            where, class_mask = None, where
        self.num_classes = z.shape[-1]
        mask = _batch(where, labels_shape, xp, dtype=bool)
        if class_mask is not None:
            mask = mask & xp.any(class_mask, axis=-1)
        self.mask = mask
        self.class_mask = class_mask
        # Masked rows: logits 0 and every class in, so nothing there can be NaN.
        self.rows_class_mask = None if class_mask is None else class_mask | ~mask[..., None]
        self.z = xp.where(mask[..., None], z, 0.0)

    def adjusted(self, logit_adjustment):
        if logit_adjustment is None:
            return self.z
        return self.z + _rows(_f64(logit_adjustment, self.xp), self.z.ndim, self.xp)

    def predicted(self):
        """`argmax` of the (row-neutralised) logits over the classes in the softmax."""
        xp = self.xp
        z = (
            self.z
            if self.rows_class_mask is None
            else xp.where(self.rows_class_mask, self.z, -xp.inf)
        )
        return xp.argmax(z, axis=-1)

    def class_weights(self, class_weights):
        xp = self.xp
        return (
            xp.ones(self.num_classes, xp.float64)
            if class_weights is None
            else _f64(class_weights, xp)
        )

    def example_weight(self, weights, shape):
        return _batch(weights, shape, self.xp)


def _one_hot(y, num_classes, xp):
    return xp.arange(num_classes, dtype=y.dtype) == y[..., None]


class _IntegerLabels(NamedTuple):
    """What the integer-label references share: the valid labels and the softmax."""

    mask: Any  # the examples that count (`where`, `ignore_index`)
    y: Any  # the labels, 0 where masked
    hits: Any  # the one-hot of `y`
    zt: Any  # the adjusted logits, the label's own lowered by its margin
    lse: Any  # their log-sum-exp over the classes in the softmax

    @staticmethod
    def of(logits, labels, where, class_mask, ignore_index, logit_adjustment, label_margins, xp):
        labels = xp.asarray(labels)
        s = _Softmax(logits, labels.shape, where, class_mask, xp)
        mask = s.mask
        if ignore_index is not None:
            mask = mask & (labels != ignore_index)
        y = xp.where(mask, labels, 0)
        hits = _one_hot(y, s.num_classes, xp)
        zt = s.adjusted(logit_adjustment)
        if label_margins is not None:
            zt = zt - xp.where(hits, _f64(label_margins, xp)[y][..., None], 0.0)
        return s, _IntegerLabels(mask, y, hits, zt, logsumexp(zt, s.rows_class_mask, xp=xp))

    def finish(self, s, loss, cw, weights, cost_matrix, z_loss, reduction):
        """Adds the z-loss `λ·c_y·lse²`, weights by `s·M[y, argmax]` and reduces."""
        xp, cw_y = s.xp, cw[self.y]
        loss = loss + z_loss * cw_y * self.lse**2
        example_weight = s.example_weight(weights, self.y.shape)
        if cost_matrix is not None:
            example_weight = example_weight * _f64(cost_matrix, xp)[self.y, s.predicted()]
        return reduce(example_weight * loss, reduction, self.mask, example_weight * cw_y, xp=xp)


def softmax_cross_entropy_with_integer_labels(
    logits,
    labels,
    *,
    xp=np,
    where=None,
    class_mask=None,
    weights=None,
    class_weights=None,
    cost_matrix=None,
    ignore_index=None,
    label_smoothing=0.0,
    z_loss=0.0,
    logit_adjustment=None,
    label_margins=None,
    reduction="none",
):
    """PyTorch `F.cross_entropy` semantics plus TF weights, cost matrix, z-loss, long tail.

    With `z̃ = z + δ` and the label's own logit lowered by its margin,
    `ℓ = (1−ε)·c_y·(lse(z̃) − z̃_y) + (ε/C)·Σ_k c_k·(lse(z̃) − z̃_k) + λ·c_y·lse²`;
    the label's logit is taken from the logits as given even where a class
    mask leaves its class out (optax).
    """
    s, labelled = _IntegerLabels.of(
        logits, labels, where, class_mask, ignore_index, logit_adjustment, label_margins, xp
    )
    picked = xp.sum(xp.where(labelled.hits, labelled.zt, 0.0), axis=-1)
    cw = s.class_weights(class_weights)
    loss = (1.0 - label_smoothing) * cw[labelled.y] * (labelled.lse - picked)
    if _present(label_smoothing):
        smooth = xp.sum(_rows(cw, s.z.ndim, xp) * (labelled.lse[..., None] - labelled.zt), axis=-1)
        loss = loss + label_smoothing / s.num_classes * smooth
    return labelled.finish(s, loss, cw, weights, cost_matrix, z_loss, reduction)


def _probability_targets(s, labels, class_weights, label_smoothing):
    """`(q, t)`: the labels zeroed on masked rows and classes, and `t = c·q̃`."""
    xp = s.xp
    q = xp.broadcast_to(_f64(labels, xp), s.z.shape)
    keep = s.mask[..., None] if s.class_mask is None else s.mask[..., None] & s.class_mask
    q = xp.where(keep, q, 0.0)
    spread = xp.ones(s.z.shape) if s.class_mask is None else xp.where(s.class_mask, 1.0, 0.0)
    q_smooth = (1.0 - label_smoothing) * q + label_smoothing / s.num_classes * spread
    return q, _rows(s.class_weights(class_weights), s.z.ndim, xp) * q_smooth


def _probability_finish(s, loss, q, zt, class_weights, weights, cost_matrix, z_loss, reduction):
    """Adds the z-loss `λ·(Σ_k c_k q_k)·lse²`, weights by `s·Σ_y q_y M[y, argmax]`, reduces."""
    xp = s.xp
    label_weight = xp.ones(s.mask.shape, xp.float64)
    if class_weights is not None:
        label_weight = xp.sum(_rows(_f64(class_weights, xp), q.ndim, xp) * q, axis=-1)
    loss = loss + z_loss * label_weight * logsumexp(zt, s.rows_class_mask, xp=xp) ** 2
    example_weight = s.example_weight(weights, s.mask.shape)
    if cost_matrix is not None:
        columns = xp.transpose(_f64(cost_matrix, xp))[s.predicted()]
        example_weight = example_weight * xp.sum(q * columns, axis=-1)
    return reduce(example_weight * loss, reduction, s.mask, example_weight * label_weight, xp=xp)


def softmax_cross_entropy(
    logits,
    labels,
    *,
    xp=np,
    where=None,
    class_mask=None,
    weights=None,
    class_weights=None,
    cost_matrix=None,
    label_smoothing=0.0,
    z_loss=0.0,
    logit_adjustment=None,
    poly_epsilon=None,
    reduction="none",
):
    """`−Σ_k c_k q̃_k log p_k` (+ PolyLoss `ε·Σ_k c_k q̃_k (1 − p_k)`), `0·log 0 = 0`.

    The `"weighted_mean"` weight is `weights·Σ_k c_k q_k` with class weights,
    `weights` without; with a cost matrix `Σ_y q_y M[y, argmax z]` multiplies both.
    """
    s = _Softmax(logits, np.shape(logits)[:-1], where, class_mask, xp)
    q, t = _probability_targets(s, labels, class_weights, label_smoothing)
    zt = s.adjusted(logit_adjustment)
    log_p = log_softmax(zt, s.rows_class_mask, xp=xp)
    loss = -xp.sum(_safe_product(t, log_p, xp), axis=-1)
    if poly_epsilon is not None:
        loss = loss + poly_epsilon * xp.sum(t * (1.0 - xp.exp(log_p)), axis=-1)
    return _probability_finish(
        s, loss, q, zt, class_weights, weights, cost_matrix, z_loss, reduction
    )


def _focal(log_p, gamma, xp):
    """`h(log p) = −(1 − p)^γ·log p`, finite where `log p = −inf` is masked out by the caller."""
    return -((-xp.expm1(log_p)) ** gamma) * log_p


def softmax_focal_loss(
    logits,
    labels,
    *,
    xp=np,
    gamma=2.0,
    where=None,
    class_mask=None,
    weights=None,
    class_weights=None,
    cost_matrix=None,
    label_smoothing=0.0,
    z_loss=0.0,
    logit_adjustment=None,
    reduction="none",
):
    """Keras `CategoricalFocalCrossentropy`: `−Σ_k c_k q̃_k (1 − p_k)^γ log p_k` (+ z-loss)."""
    s = _Softmax(logits, np.shape(logits)[:-1], where, class_mask, xp)
    q, t = _probability_targets(s, labels, class_weights, label_smoothing)
    zt = s.adjusted(logit_adjustment)
    log_p = log_softmax(zt, s.rows_class_mask, xp=xp)
    safe_log_p = xp.where(t == 0, -1.0, log_p)
    loss = xp.sum(_safe_product(t, _focal(safe_log_p, gamma, xp), xp), axis=-1)
    return _probability_finish(
        s, loss, q, zt, class_weights, weights, cost_matrix, z_loss, reduction
    )


def softmax_focal_loss_with_integer_labels(
    logits,
    labels,
    *,
    xp=np,
    gamma=2.0,
    where=None,
    class_mask=None,
    weights=None,
    class_weights=None,
    cost_matrix=None,
    ignore_index=None,
    label_smoothing=0.0,
    z_loss=0.0,
    logit_adjustment=None,
    label_margins=None,
    reduction="none",
):
    """`(1−ε)·c_y·h(log p_y) + (ε/C)·Σ_k c_k·h(log p_k) + λ·c_y·lse²`, `h` the focal term.

    `p` is the softmax of the adjusted logits with the label's margin, as in
    `softmax_cross_entropy_with_integer_labels`.
    """
    s, labelled = _IntegerLabels.of(
        logits, labels, where, class_mask, ignore_index, logit_adjustment, label_margins, xp
    )
    log_p = labelled.zt - labelled.lse[..., None]
    cw = s.class_weights(class_weights)
    log_p_y = xp.sum(xp.where(labelled.hits, log_p, 0.0), axis=-1)
    loss = (1.0 - label_smoothing) * cw[labelled.y] * _focal(log_p_y, gamma, xp)
    if _present(label_smoothing):
        spread = xp.sum(_rows(cw, s.z.ndim, xp) * _focal(log_p, gamma, xp), axis=-1)
        loss = loss + label_smoothing / s.num_classes * spread
    return labelled.finish(s, loss, cw, weights, cost_matrix, z_loss, reduction)


# ---------------------------------------------------------------------------
# Sigmoid family (`docs/semantics.md`: the sigmoid losses): elementwise, like optax
# and PyTorch.
# ---------------------------------------------------------------------------


def log_sigmoid(x, *, xp=np):
    """`log σ(x) = −log(1 + e^{−x})`, finite for any finite x."""
    return -xp.logaddexp(0.0, -_f64(x, xp))


def _elementwise(logits, labels, xp):
    x, y = _f64(logits, xp), _f64(labels, xp)
    shape = np.broadcast_shapes(x.shape, y.shape)
    return xp.broadcast_to(x, shape), xp.broadcast_to(y, shape), shape


def sigmoid_binary_cross_entropy(
    logits,
    labels,
    *,
    xp=np,
    weights=None,
    pos_weight=None,
    where=None,
    label_smoothing=0.0,
    reduction="none",
):
    """TF `weighted_cross_entropy_with_logits` / PyTorch `BCEWithLogitsLoss(pos_weight)`.

    `−(c·ỹ·log σ(x) + (1 − ỹ)·log(1 − σ(x)))` with `ỹ = (1 − ε)·y + ε/2` (Keras).
    """
    x, y, shape = _elementwise(logits, labels, xp)
    mask = _batch(where, shape, xp, dtype=bool)
    x, y = xp.where(mask, x, 0.0), xp.where(mask, y, 0.0)
    y = (1.0 - label_smoothing) * y + 0.5 * label_smoothing
    c = _batch(pos_weight, shape, xp)
    loss = -(c * y * log_sigmoid(x, xp=xp) + (1.0 - y) * log_sigmoid(-x, xp=xp))
    weight = _batch(weights, shape, xp)
    return reduce(weight * loss, reduction, mask, weight, xp=xp)


def sigmoid_focal_loss(
    logits, labels, alpha=None, gamma=2.0, *, xp=np, weights=None, where=None, reduction="none"
):
    """Lin et al.: `α_t·(1 − p_t)^γ·CE`, `1 − p_t = (1 − y)·s + y·(1 − s)`."""
    x, y, shape = _elementwise(logits, labels, xp)
    mask = _batch(where, shape, xp, dtype=bool)
    x, y = xp.where(mask, x, 0.0), xp.where(mask, y, 0.0)
    log_s, log_not_s = log_sigmoid(x, xp=xp), log_sigmoid(-x, xp=xp)
    ce = -(y * log_s + (1.0 - y) * log_not_s)
    one_minus_p_t = (1.0 - y) * xp.exp(log_s) + y * xp.exp(log_not_s)
    loss = one_minus_p_t**gamma * ce
    if alpha is not None:
        a = _batch(alpha, shape, xp)
        loss = (a * y + (1.0 - a) * (1.0 - y)) * loss
    weight = _batch(weights, shape, xp)
    return reduce(weight * loss, reduction, mask, weight, xp=xp)


# ---------------------------------------------------------------------------
# Probability inputs (Keras 3 `from_logits=False`), class axis last.
# ---------------------------------------------------------------------------


def keras_clip(p, epsilon, dtype, *, xp=np):
    """Keras's `clip(p, ε, 1 − ε)`, with the bounds rounded to `dtype` as `jnp.clip` does.

    In float64 nothing is rounded, so `ε` may be traced (differentiated).
    """
    if np.dtype(dtype) == np.float64:
        return xp.clip(_f64(p, xp), epsilon, 1.0 - epsilon)
    low = float(np.asarray(epsilon, dtype))
    high = float(np.asarray(1.0 - epsilon, dtype))
    return xp.clip(_f64(p, xp), low, high)


def categorical_cross_entropy(
    probs,
    labels,
    *,
    xp=np,
    epsilon=1e-7,
    clip_dtype=np.float64,
    where=None,
    weights=None,
    class_weights=None,
    label_smoothing=0.0,
    reduction="none",
):
    """Keras: `−Σ_k c_k q̃_k log clip(p_k / Σp, ε, 1 − ε)`, `q̃ = (1 − ε)·q + ε/C`."""
    p = _f64(probs, xp)
    q = xp.broadcast_to(_f64(labels, xp), p.shape)
    num_classes = p.shape[-1]
    mask = _batch(where, p.shape[:-1], xp, dtype=bool)
    p = xp.where(mask[..., None], p, 1.0)
    q = xp.where(mask[..., None], q, 0.0)
    p_hat = keras_clip(p / xp.sum(p, axis=-1, keepdims=True), epsilon, clip_dtype, xp=xp)
    cw = xp.ones(num_classes) if class_weights is None else _f64(class_weights, xp)
    cw = _rows(cw, p.ndim, xp)
    targets = cw * ((1.0 - label_smoothing) * q + label_smoothing / num_classes)
    loss = -xp.sum(targets * xp.log(p_hat), axis=-1)
    label_weight = None if class_weights is None else xp.sum(cw * q, axis=-1)
    example_weight = _batch(weights, mask.shape, xp)
    weight = example_weight if label_weight is None else example_weight * label_weight
    return reduce(example_weight * loss, reduction, mask, weight, xp=xp)


def binary_cross_entropy(
    probs,
    labels,
    *,
    xp=np,
    epsilon=1e-7,
    clip_dtype=np.float64,
    pos_weight=None,
    where=None,
    weights=None,
    label_smoothing=0.0,
    reduction="none",
):
    """Keras: the mean over the last axis of the clipped BCE (with TF's `pos_weight`)."""
    p = _f64(probs, xp)
    y = xp.broadcast_to(_f64(labels, xp), p.shape)
    mask = _batch(where, p.shape[:-1], xp, dtype=bool)
    y = xp.where(mask[..., None], y, 0.0)
    y = (1.0 - label_smoothing) * y + 0.5 * label_smoothing
    p_hat = keras_clip(xp.where(mask[..., None], p, 0.5), epsilon, clip_dtype, xp=xp)
    c = _batch(pos_weight, p.shape, xp)
    elementwise = -(c * y * xp.log(p_hat) + (1.0 - y) * xp.log(1.0 - p_hat))
    loss = xp.mean(elementwise, axis=-1)
    example_weight = _batch(weights, mask.shape, xp)
    return reduce(example_weight * loss, reduction, mask, example_weight, xp=xp)


# ---------------------------------------------------------------------------
# Fused linear projection + softmax cross-entropy (`docs/semantics.md`: fused).
# ---------------------------------------------------------------------------


def linear_logits(x, w, bias=None, logit_soft_cap=None, *, xp=np, stored_dtype=None):
    """`cap(x @ w + bias)`, with Gemma 2's soft cap `cap(z) = c·tanh(z/c)`.

    `stored_dtype`: `x @ w + bias` rounded to it before the cap (the GPU and
    TPU plan stores half-precision logits in the inputs' dtype).
    """
    z = _f64(x, xp) @ _f64(w, xp)
    if bias is not None:
        z = z + _rows(_f64(bias, xp), z.ndim, xp)
    if stored_dtype is not None:
        z = _f64(xp.asarray(z, stored_dtype), xp)
    if logit_soft_cap is not None:
        z = logit_soft_cap * xp.tanh(z / logit_soft_cap)
    return z


def linear_softmax_cross_entropy(
    x, w, labels, *, xp=np, bias=None, logit_soft_cap=None, stored_dtype=None, **options
):
    """The integer-label softmax reference on the projected (and capped) logits."""
    logits = linear_logits(x, w, bias, logit_soft_cap, xp=xp, stored_dtype=stored_dtype)
    return softmax_cross_entropy_with_integer_labels(logits, labels, xp=xp, **options)


# Class-weight tools, written from the formulas in docs/class_weights.md: absent
# classes (count 0) get weight 0 and are left out of C₊, the median and every
# normalisation.
# ---------------------------------------------------------------------------


def class_counts(labels, num_classes, *, where=None, weights=None, ignore_index=None):
    """Counts by a loop over the examples; out-of-range integer labels are skipped."""
    labels = np.asarray(labels)
    soft = np.issubdtype(labels.dtype, np.floating)
    batch_shape = labels.shape[:-1] if soft else labels.shape
    mask = np.ones(batch_shape, bool)
    if where is not None:
        mask &= np.broadcast_to(where, batch_shape)
    weight = np.ones(batch_shape)
    if weights is not None:
        weight = np.broadcast_to(np.asarray(weights, np.float64), batch_shape)
    counts = np.zeros(num_classes)
    for index in np.ndindex(*batch_shape):
        if not mask[index]:
            continue
        if soft:
            counts += weight[index] * labels[index].astype(np.float64)
            continue
        label = int(labels[index])
        if label != ignore_index and 0 <= label < num_classes:
            counts[label] += weight[index]
    return counts


def class_weights_from_counts(counts, method="inverse", normalize=None, beta=0.999):
    """The weight formulas of each method in float64, over the present classes."""
    n = np.asarray(counts, np.float64)
    present = n > 0
    if not present.any():
        return np.zeros_like(n)
    p = n[present]
    total = n.sum()
    raw = {
        "inverse": lambda: 1.0 / p,
        "inverse_sqrt": lambda: 1.0 / np.sqrt(p),
        "balanced": lambda: total / (present.sum() * p),
        "effective_number": lambda: (1.0 - beta) / (1.0 - beta**p),
        "median_frequency": lambda: np.median(p) / p,
    }[method]()
    w = np.zeros_like(n)
    w[present] = raw
    if normalize == "sum_to_one":
        w = w / w.sum()
    elif normalize == "sum_to_num_classes":
        w = w * present.sum() / w.sum()
    elif normalize == "mean_one":
        w = w * total / (n * w).sum()
    return w


def cost_matrix_from_class_weights(class_weights, by):
    """`M[y, k] = c_y` (by label) or `c_k` (by prediction)."""
    c = np.asarray(class_weights, np.float64)
    rows = np.tile(c, (c.size, 1))
    return rows.T if by == "label" else rows


def class_balance_frequencies(batch_frequencies, decays):
    """The closed form of the bias-corrected EMA: batch s gets weight
    `(1 − d_s)·Π_{r > s} d_r`, normalised by the sum of the weights."""
    num_batches = len(batch_frequencies)
    weights = np.array([(1.0 - decays[s]) * np.prod(decays[s + 1 :]) for s in range(num_batches)])
    stacked = np.asarray(batch_frequencies, np.float64)
    return (weights[:, None] * stacked).sum(axis=0) / weights.sum()
