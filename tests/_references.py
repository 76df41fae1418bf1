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
    loss = -np.sum(np.where(targets == 0, 0.0, targets * log_p), axis=-1)
    if poly_epsilon is not None:
        loss = loss + poly_epsilon * np.sum(targets * (1.0 - np.exp(log_p)), axis=-1)
    label_weight = np.ones(mask.shape) if class_weights is None else np.sum(cw * q, axis=-1)
    loss = loss + z_loss * label_weight * logsumexp(z, safe_class_mask) ** 2
    example_weight = np.ones(mask.shape)
    if weights is not None:
        example_weight = np.broadcast_to(np.asarray(weights, np.float64), mask.shape)
    return reduce(example_weight * loss, reduction, mask, example_weight * label_weight)
