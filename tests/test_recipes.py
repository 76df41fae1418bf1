"""The recipes people port, reproduced from their own formulas in float64 NumPy."""

import jax.numpy as jnp
import numpy as np

import jwxent
from tests._tolerance import assert_close

RNG = np.random.default_rng(42)
LOGITS = (2 * RNG.standard_normal((32, 5))).astype(np.float32)
LABELS = RNG.integers(0, 5, 32).astype(np.int32)
CLASS_WEIGHTS = np.array([1.0, 0.0, 2.5, 4.0, 0.5], np.float32)  # a zero weight on purpose


def _nll(logits, labels):
    z = np.asarray(logits, np.float64)
    log_p = z - z.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels]


def test_tf1_gather_weights_with_sum_by_nonzero_weights():
    """`tf.losses.sparse_softmax_cross_entropy(labels, logits, weights=tf.gather(cw, labels))`."""
    weights = CLASS_WEIGHTS[LABELS].astype(np.float64)
    expected = np.sum(weights * _nll(LOGITS, LABELS)) / np.count_nonzero(weights)
    actual = jwxent.softmax_cross_entropy_with_integer_labels(
        LOGITS, LABELS, class_weights=CLASS_WEIGHTS, reduction="sum_by_nonzero_weights"
    )
    assert_close(actual, expected, jnp.float32, terms=32)


def test_tf2_one_hot_reduce_sum_weights_with_mean():
    """`w = reduce_sum(cw * onehot, 1); reduce_mean(w * unweighted_losses)`."""
    one_hot = np.eye(5)[LABELS]
    weights = np.sum(CLASS_WEIGHTS * one_hot, axis=1)
    expected = np.mean(weights * _nll(LOGITS, LABELS))
    actual = jwxent.softmax_cross_entropy_with_integer_labels(
        LOGITS, LABELS, class_weights=CLASS_WEIGHTS, reduction="mean"
    )
    assert_close(actual, expected, jnp.float32, terms=32)
    soft = jwxent.softmax_cross_entropy(
        LOGITS, one_hot.astype(np.float32), class_weights=CLASS_WEIGHTS, reduction="mean"
    )
    assert_close(soft, expected, jnp.float32, terms=32)


def test_weighting_by_the_predicted_label_via_a_cost_matrix():
    """`weights = class_weights[argmax(logits)]` as `M[y, k] = class_weights[k]`."""
    predicted = np.argmax(LOGITS, -1)
    expected = CLASS_WEIGHTS[predicted] * _nll(LOGITS, LABELS)
    cost_matrix = np.tile(CLASS_WEIGHTS, (5, 1))
    actual = jwxent.softmax_cross_entropy_with_integer_labels(
        LOGITS, LABELS, cost_matrix=cost_matrix
    )
    assert_close(actual, expected, jnp.float32, terms=5)


def test_full_cost_matrix_weights_by_truth_and_prediction():
    cost_matrix = RNG.uniform(0.0, 3.0, (5, 5)).astype(np.float32)
    expected = cost_matrix[LABELS, np.argmax(LOGITS, -1)] * _nll(LOGITS, LABELS)
    actual = jwxent.softmax_cross_entropy_with_integer_labels(
        LOGITS, LABELS, cost_matrix=cost_matrix, reduction="sum"
    )
    assert_close(actual, expected.sum(), jnp.float32, terms=32)


def test_pytorch_cross_entropy_weight_ignore_index_label_smoothing_mean():
    """`F.cross_entropy(weight=cw, ignore_index=-100, label_smoothing=0.1)` (mean)."""
    labels = np.where(RNG.random(32) < 0.2, -100, LABELS).astype(np.int32)
    kept = labels != -100
    z = np.asarray(LOGITS, np.float64)[kept]
    y = labels[kept]
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    cw = CLASS_WEIGHTS.astype(np.float64)
    per_example = 0.9 * cw[y] * -log_p[np.arange(len(y)), y] + 0.1 / 5 * (-log_p * cw).sum(-1)
    expected = per_example.sum() / cw[y].sum()
    actual = jwxent.softmax_cross_entropy_with_integer_labels(
        LOGITS,
        labels,
        class_weights=CLASS_WEIGHTS,
        ignore_index=-100,
        label_smoothing=0.1,
        reduction="weighted_mean",
    )
    assert_close(actual, expected, jnp.float32, terms=32)


def test_multiplying_logits_by_class_weights_is_not_the_weighted_loss():
    """`CE(cw * z)` changes the softmax normaliser; the weighted loss is `cw[y]·CE(z)`."""
    cw = np.array([1.0, 3.0, 0.5, 2.0, 1.5], np.float32)
    weighted = jwxent.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS, class_weights=cw)
    expected = cw[LABELS] * _nll(LOGITS, LABELS)
    assert_close(weighted, expected, jnp.float32, terms=5)
    scaled_logits = jwxent.softmax_cross_entropy_with_integer_labels(LOGITS * cw, LABELS)
    assert_close(scaled_logits, _nll(LOGITS * cw, LABELS), jnp.float32, terms=5)
    assert np.max(np.abs(np.asarray(scaled_logits) - expected)) > 0.5
