"""NumPy float64 references: the executable definition of every keyword in SPEC.

Independent of JAX: plain NumPy in float64, written from the formulas in the
docs, never from the library's code. Each family has its own section; append
new sections at the end of this file.
"""

import numpy as np

# ---------------------------------------------------------------------------
# Reductions (SPEC §4).
# ---------------------------------------------------------------------------


def reduce(values, reduction, mask=None, weight=None):
    """SPEC §4 on float64 NumPy arrays; a zero denominator gives 0."""
    values = np.asarray(values, np.float64)
    mask = np.ones(values.shape, bool) if mask is None else np.broadcast_to(mask, values.shape)
    weight = np.ones(values.shape) if weight is None else np.broadcast_to(weight, values.shape)
    values = np.where(mask, values, 0.0)
    if reduction == "none":
        return values
    total = values.sum()
    denominators = {
        "sum": 1.0,
        "mean": mask.sum(),
        "weighted_mean": np.where(mask, weight, 0.0).sum(),
        "sum_by_nonzero_weights": (np.where(mask, weight, 0.0) != 0).sum(),
    }
    denominator = float(denominators[reduction])
    return np.float64(0.0) if denominator == 0 else total / denominator


# ---------------------------------------------------------------------------
# Softmax family (SPEC §2–§3), class axis last.
# ---------------------------------------------------------------------------


def log_softmax(logits, class_mask=None):
    """float64 log-softmax over the last axis, restricted to `class_mask`."""
    z = np.asarray(logits, np.float64)
    if class_mask is not None:
        z = np.where(class_mask, z, -np.inf)
    shift = np.max(z, axis=-1, keepdims=True)
    shifted = z - shift
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def logsumexp(logits, class_mask=None):
    z = np.asarray(logits, np.float64)
    if class_mask is not None:
        z = np.where(class_mask, z, -np.inf)
    shift = np.max(z, axis=-1, keepdims=True)
    return (shift + np.log(np.sum(np.exp(z - shift), axis=-1, keepdims=True)))[..., 0]


def softmax_cross_entropy_with_integer_labels(
    logits,
    labels,
    *,
    where=None,
    class_mask=None,
    weights=None,
    class_weights=None,
    cost_matrix=None,
    ignore_index=None,
    label_smoothing=0.0,
    z_loss=0.0,
    reduction="none",
):
    """PyTorch `F.cross_entropy` semantics plus TF weights, cost matrix, z-loss.

    `where` is a batch-shaped example mask; `class_mask` a logits-shaped one.
    """
    z = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    num_classes = z.shape[-1]
    mask = np.ones(labels.shape, bool)
    if where is not None:
        mask &= np.broadcast_to(where, labels.shape)
    if class_mask is not None:
        mask &= np.any(class_mask, axis=-1)
    if ignore_index is not None:
        mask &= labels != ignore_index
    y = np.where(mask, labels, 0)
    safe_class_mask = None if class_mask is None else class_mask | ~mask[..., None]
    z = np.where(mask[..., None], z, 0.0)
    log_p = log_softmax(z, safe_class_mask)
    lse = logsumexp(z, safe_class_mask)
    cw = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, np.float64)
    cw_y = cw[y]
    nll_y = -np.take_along_axis(z, y[..., None], -1)[..., 0] + lse
    loss = (1.0 - label_smoothing) * cw_y * nll_y
    if label_smoothing:
        loss = loss + label_smoothing / num_classes * np.sum(cw * -log_p, axis=-1)
    loss = loss + z_loss * cw_y * lse**2
    example_weight = np.ones(labels.shape)
    if weights is not None:
        example_weight = example_weight * np.broadcast_to(
            np.asarray(weights, np.float64), labels.shape
        )
    if cost_matrix is not None:
        predicted = np.argmax(
            z if class_mask is None else np.where(safe_class_mask, z, -np.inf), -1
        )
        example_weight = example_weight * np.asarray(cost_matrix, np.float64)[y, predicted]
    return reduce(example_weight * loss, reduction, mask, example_weight * cw_y)


def softmax_cross_entropy(
    logits,
    labels,
    *,
    where=None,
    class_mask=None,
    weights=None,
    class_weights=None,
    label_smoothing=0.0,
    z_loss=0.0,
    poly_epsilon=None,
    reduction="none",
):
    """Probability labels: `−Σ_k c_k q̃_k log p_k` (+ PolyLoss term, z-loss)."""
    z = np.asarray(logits, np.float64)
    q = np.broadcast_to(np.asarray(labels, np.float64), z.shape)
    num_classes = z.shape[-1]
    mask = np.ones(z.shape[:-1], bool)
    if where is not None:
        mask &= np.broadcast_to(where, mask.shape)
    if class_mask is not None:
        mask &= np.any(class_mask, axis=-1)
    safe_class_mask = None if class_mask is None else class_mask | ~mask[..., None]
    z = np.where(mask[..., None], z, 0.0)
    cw = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, np.float64)
    smoothed = (1.0 - label_smoothing) * q + label_smoothing / num_classes
    targets = cw * smoothed
    if class_mask is not None:
        targets = np.where(safe_class_mask, targets, 0.0)
    log_p = log_softmax(z, safe_class_mask)
    loss = -np.sum(targets * np.where(targets == 0, 0.0, log_p), axis=-1)  # 0·log 0 = 0
    if poly_epsilon is not None:
        loss = loss + poly_epsilon * np.sum(targets * (1.0 - np.exp(log_p)), axis=-1)
    label_weight = np.ones(mask.shape) if class_weights is None else np.sum(cw * q, axis=-1)
    loss = loss + z_loss * label_weight * logsumexp(z, safe_class_mask) ** 2
    example_weight = np.ones(mask.shape)
    if weights is not None:
        example_weight = np.broadcast_to(np.asarray(weights, np.float64), mask.shape)
    return reduce(example_weight * loss, reduction, mask, example_weight * label_weight)


# ---------------------------------------------------------------------------
# Plain-JAX autodiff twins of the softmax family (no custom VJP), for gradients.
# ---------------------------------------------------------------------------


def _jax_reduce(values, reduction, mask, weight):
    import jax.numpy as jnp

    values = jnp.where(mask, values, 0.0)
    if reduction == "none":
        return values
    total = jnp.sum(values)
    masked_weight = jnp.where(mask, weight, 0.0)
    denominator = {
        "sum": jnp.ones((), values.dtype),
        "mean": jnp.sum(mask, dtype=values.dtype),
        "weighted_mean": jnp.sum(masked_weight),
        "sum_by_nonzero_weights": jnp.sum(masked_weight != 0, dtype=values.dtype),
    }[reduction]
    safe = jnp.where(denominator == 0, 1.0, denominator)
    return jnp.where(denominator == 0, 0.0, total / safe)


def jax_integer_label_twin(
    logits,
    labels,
    *,
    where=None,
    weights=None,
    class_weights=None,
    cost_matrix=None,
    ignore_index=None,
    label_smoothing=0.0,
    z_loss=0.0,
    reduction="none",
):
    """`softmax_cross_entropy_with_integer_labels` in plain JAX (class axis last)."""
    import jax
    import jax.numpy as jnp

    num_classes = logits.shape[-1]
    mask = jnp.ones(labels.shape, bool)
    if where is not None:
        mask = mask & jnp.broadcast_to(where, labels.shape)
    if ignore_index is not None:
        mask = mask & (labels != ignore_index)
    y = jnp.where(mask, labels, 0)
    z = jnp.where(mask[..., None], logits, 0.0)
    log_p = jax.nn.log_softmax(z, axis=-1)
    lse = jax.nn.logsumexp(z, axis=-1)
    cw = jnp.ones(num_classes, z.dtype) if class_weights is None else class_weights
    cw_y = cw[y]
    cw_rows = jnp.broadcast_to(cw, z.shape)
    nll_y = -jnp.take_along_axis(log_p, y[..., None], axis=-1)[..., 0]
    loss = (1.0 - label_smoothing) * cw_y * nll_y
    if label_smoothing:
        loss = loss + label_smoothing / num_classes * jnp.sum(cw_rows * -log_p, axis=-1)
    loss = loss + z_loss * cw_y * lse**2
    example_weight = jnp.ones(labels.shape, z.dtype)
    if weights is not None:
        example_weight = example_weight * weights
    if cost_matrix is not None:
        example_weight = example_weight * cost_matrix[y, jnp.argmax(jax.lax.stop_gradient(z), -1)]
    return _jax_reduce(example_weight * loss, reduction, mask, example_weight * cw_y)


def jax_probability_label_twin(
    logits,
    labels,
    *,
    where=None,
    weights=None,
    class_weights=None,
    label_smoothing=0.0,
    z_loss=0.0,
    poly_epsilon=None,
    reduction="none",
):
    """`softmax_cross_entropy` / `poly_loss_cross_entropy` in plain JAX."""
    import jax
    import jax.numpy as jnp

    num_classes = logits.shape[-1]
    mask = jnp.ones(logits.shape[:-1], bool)
    if where is not None:
        mask = mask & jnp.broadcast_to(where, mask.shape)
    z = jnp.where(mask[..., None], logits, 0.0)
    log_p = jax.nn.log_softmax(z, axis=-1)
    cw = jnp.ones(num_classes, z.dtype) if class_weights is None else class_weights
    cw_rows = jnp.broadcast_to(cw, z.shape)
    targets = cw_rows * ((1.0 - label_smoothing) * labels + label_smoothing / num_classes)
    loss = -jnp.sum(targets * log_p, axis=-1)
    if poly_epsilon is not None:
        loss = loss + poly_epsilon * jnp.sum(targets * (1.0 - jnp.exp(log_p)), axis=-1)
    label_weight = jnp.ones(mask.shape, z.dtype)
    if class_weights is not None:
        label_weight = jnp.sum(cw_rows * labels, axis=-1)
    loss = loss + z_loss * label_weight * jax.nn.logsumexp(z, axis=-1) ** 2
    example_weight = jnp.ones(mask.shape, z.dtype) if weights is None else weights
    return _jax_reduce(example_weight * loss, reduction, mask, example_weight * label_weight)


# ---------------------------------------------------------------------------
# Sigmoid family (SPEC §2–§3): elementwise, like optax and PyTorch.
# ---------------------------------------------------------------------------


def log_sigmoid(x):
    """float64 `log σ(x) = −log(1 + e^{−x})`, finite for any finite x."""
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def _elementwise(x, shape):
    return None if x is None else np.broadcast_to(np.asarray(x, np.float64), shape)


def sigmoid_binary_cross_entropy(
    logits,
    labels,
    *,
    weights=None,
    pos_weight=None,
    where=None,
    label_smoothing=0.0,
    reduction="none",
):
    """TF `weighted_cross_entropy_with_logits` / PyTorch `BCEWithLogitsLoss(pos_weight)`.

    `−(c·ỹ·log σ(x) + (1 − ỹ)·log(1 − σ(x)))` with `ỹ = (1 − ε)·y + ε/2` (Keras).
    """
    x, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    shape = np.broadcast_shapes(x.shape, y.shape)
    x, y = np.broadcast_to(x, shape), np.broadcast_to(y, shape)
    y = (1.0 - label_smoothing) * y + 0.5 * label_smoothing
    c = np.ones(shape) if pos_weight is None else _elementwise(pos_weight, shape)
    loss = -(c * y * log_sigmoid(x) + (1.0 - y) * log_sigmoid(-x))
    weight = np.ones(shape) if weights is None else _elementwise(weights, shape)
    mask = None if where is None else np.broadcast_to(where, shape)
    return reduce(weight * loss, reduction, mask, weight)


def sigmoid_focal_loss(
    logits, labels, alpha=None, gamma=2.0, *, weights=None, where=None, reduction="none"
):
    """Lin et al.: `α_t·(1 − p_t)^γ·CE`, `1 − p_t = (1 − y)·s + y·(1 − s)`."""
    x, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    shape = np.broadcast_shapes(x.shape, y.shape)
    x, y = np.broadcast_to(x, shape), np.broadcast_to(y, shape)
    log_s, log_not_s = log_sigmoid(x), log_sigmoid(-x)
    ce = -(y * log_s + (1.0 - y) * log_not_s)
    one_minus_p_t = (1.0 - y) * np.exp(log_s) + y * np.exp(log_not_s)
    loss = one_minus_p_t**gamma * ce
    if alpha is not None:
        a = _elementwise(alpha, shape)
        loss = (a * y + (1.0 - a) * (1.0 - y)) * loss
    weight = np.ones(shape) if weights is None else _elementwise(weights, shape)
    mask = None if where is None else np.broadcast_to(where, shape)
    return reduce(weight * loss, reduction, mask, weight)


# ---------------------------------------------------------------------------
# Softmax focal losses (Keras CategoricalFocalCrossentropy), class axis last.
# ---------------------------------------------------------------------------


def softmax_focal_loss(
    logits,
    labels,
    *,
    gamma=2.0,
    where=None,
    class_mask=None,
    weights=None,
    class_weights=None,
    label_smoothing=0.0,
    reduction="none",
    label_weight=None,
):
    """`−Σ_k c_k q̃_k (1 − p_k)^γ log p_k`, `q̃ = (1 − ε)·q + ε/C`.

    The `"weighted_mean"` weight is `weights·Σ_k c_k q_k`, or `weights·label_weight`
    when given (integer labels: `c_y`). A zero target contributes 0.
    """
    z = np.asarray(logits, np.float64)
    q = np.broadcast_to(np.asarray(labels, np.float64), z.shape)
    num_classes = z.shape[-1]
    mask = np.ones(z.shape[:-1], bool)
    if where is not None:
        mask &= np.broadcast_to(where, mask.shape)
    if class_mask is not None:
        mask &= np.any(class_mask, axis=-1)
    safe_class_mask = None if class_mask is None else class_mask | ~mask[..., None]
    z = np.where(mask[..., None], z, 0.0)
    cw = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, np.float64)
    targets = cw * ((1.0 - label_smoothing) * q + label_smoothing / num_classes)
    if class_mask is not None:
        targets = np.where(safe_class_mask, targets, 0.0)
    log_p = log_softmax(z, safe_class_mask)
    safe_log_p = np.where(targets == 0, -1.0, log_p)
    focal = -((-np.expm1(safe_log_p)) ** gamma) * safe_log_p
    loss = np.sum(np.where(targets == 0, 0.0, targets * focal), axis=-1)
    if label_weight is None:
        label_weight = np.ones(mask.shape) if class_weights is None else np.sum(cw * q, axis=-1)
    example_weight = np.ones(mask.shape)
    if weights is not None:
        example_weight = np.broadcast_to(np.asarray(weights, np.float64), mask.shape)
    return reduce(example_weight * loss, reduction, mask, example_weight * label_weight)


def softmax_focal_loss_with_integer_labels(
    logits, labels, *, where=None, ignore_index=None, class_weights=None, **kwargs
):
    """`softmax_focal_loss` of the one-hot labels; `ignore_index` masks (PyTorch)."""
    z = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    num_classes = z.shape[-1]
    mask = np.ones(labels.shape, bool)
    if where is not None:
        mask &= np.broadcast_to(where, labels.shape)
    if ignore_index is not None:
        mask &= labels != ignore_index
    y = np.where(mask, labels, 0)
    cw = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, np.float64)
    onehot = np.eye(num_classes)[y]
    return softmax_focal_loss(
        z, onehot, where=mask, class_weights=class_weights, label_weight=cw[y], **kwargs
    )


# ---------------------------------------------------------------------------
# Probability inputs (Keras 3 `from_logits=False`), class axis last.
# ---------------------------------------------------------------------------


def keras_clip(p, epsilon, dtype):
    """Keras's `clip(p, ε, 1 − ε)`, with the bounds rounded to `dtype` as `jnp.clip` does."""
    low = float(np.asarray(epsilon, dtype))
    high = float(np.asarray(1.0 - epsilon, dtype))
    return np.clip(np.asarray(p, np.float64), low, high)


def categorical_cross_entropy(
    probs,
    labels,
    *,
    epsilon=1e-7,
    clip_dtype=np.float64,
    where=None,
    weights=None,
    class_weights=None,
    label_smoothing=0.0,
    reduction="none",
):
    """Keras: `−Σ_k c_k q̃_k log clip(p_k / Σp, ε, 1 − ε)`, `q̃ = (1 − ε)·q + ε/C`."""
    p = np.asarray(probs, np.float64)
    q = np.broadcast_to(np.asarray(labels, np.float64), p.shape)
    num_classes = p.shape[-1]
    mask = np.ones(p.shape[:-1], bool)
    if where is not None:
        mask &= np.broadcast_to(where, mask.shape)
    p = np.where(mask[..., None], p, 1.0)
    p_hat = keras_clip(p / p.sum(axis=-1, keepdims=True), epsilon, clip_dtype)
    cw = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, np.float64)
    targets = cw * ((1.0 - label_smoothing) * q + label_smoothing / num_classes)
    loss = -np.sum(targets * np.log(p_hat), axis=-1)
    label_weight = np.ones(mask.shape) if class_weights is None else np.sum(cw * q, axis=-1)
    example_weight = np.ones(mask.shape)
    if weights is not None:
        example_weight = np.broadcast_to(np.asarray(weights, np.float64), mask.shape)
    return reduce(example_weight * loss, reduction, mask, example_weight * label_weight)


def binary_cross_entropy(
    probs,
    labels,
    *,
    epsilon=1e-7,
    clip_dtype=np.float64,
    pos_weight=None,
    where=None,
    weights=None,
    label_smoothing=0.0,
    reduction="none",
):
    """Keras: the mean over the last axis of the clipped BCE (with TF's `pos_weight`)."""
    p = np.asarray(probs, np.float64)
    y = np.broadcast_to(np.asarray(labels, np.float64), p.shape)
    y = (1.0 - label_smoothing) * y + 0.5 * label_smoothing
    mask = np.ones(p.shape[:-1], bool)
    if where is not None:
        mask &= np.broadcast_to(where, mask.shape)
    p_hat = keras_clip(np.where(mask[..., None], p, 0.5), epsilon, clip_dtype)
    c = np.ones(p.shape) if pos_weight is None else _elementwise(pos_weight, p.shape)
    elementwise = -(c * y * np.log(p_hat) + (1.0 - y) * np.log(1.0 - p_hat))
    loss = elementwise.mean(axis=-1)
    example_weight = np.ones(mask.shape)
    if weights is not None:
        example_weight = np.broadcast_to(np.asarray(weights, np.float64), mask.shape)
    return reduce(example_weight * loss, reduction, mask, example_weight)


# ---------------------------------------------------------------------------
# Class-weight tools (SPEC §2 "Class-weight tools"), written from the formulas
# in docs/class_weights.md: absent classes (count 0) get weight 0 and are left
# out of C₊, the median and every normalisation.
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


# ---------------------------------------------------------------------------
# Fused linear projection + softmax cross-entropy (SPEC §2).
# ---------------------------------------------------------------------------


def linear_logits(x, w, bias=None, logit_soft_cap=None):
    """float64 `cap(x @ w + bias)`, with Gemma 2's soft cap `cap(z) = c·tanh(z/c)`."""
    z = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    if bias is not None:
        z = z + np.asarray(bias, np.float64)
    if logit_soft_cap is not None:
        z = logit_soft_cap * np.tanh(z / logit_soft_cap)
    return z


def linear_softmax_cross_entropy(x, w, labels, *, bias=None, logit_soft_cap=None, **options):
    """The integer-label softmax reference on the projected (and capped) logits."""
    logits = linear_logits(x, w, bias, logit_soft_cap)
    return softmax_cross_entropy_with_integer_labels(logits, labels, **options)


def jax_linear_twin(x, w, labels, *, bias=None, logit_soft_cap=None, **options):
    """`linear_softmax_cross_entropy` in plain JAX: whole logits, then the autodiff twin."""
    import jax.numpy as jnp

    z = x @ w
    if bias is not None:
        z = z + bias.reshape((1,) * (z.ndim - 1) + bias.shape)
    if logit_soft_cap is not None:
        z = logit_soft_cap * jnp.tanh(z / logit_soft_cap)
    return jax_integer_label_twin(z, labels, **options)
