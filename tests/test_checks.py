"""Bad input: every error of `docs/semantics.md` ("Errors and edge cases") is raised
at trace time, naming the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jwxent
from tests._registry import LOSSES
from tests.test_softmax import make_inputs

FLOAT_LABELS = {
    "softmax_cross_entropy",
    "safe_softmax_cross_entropy",
    "poly_loss_cross_entropy",
    "softmax_focal_loss",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "categorical_cross_entropy",
    "binary_cross_entropy",
}

D = make_inputs((4, 5))
SPARSE = jwxent.softmax_cross_entropy_with_integer_labels
SOFT = jwxent.softmax_cross_entropy


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: SPARSE(D["logits"], D["labels"].astype(np.float32)),
            TypeError,
            "`labels`.*float32",
        ),
        (lambda: SPARSE(D["labels"][:, None], D["labels"]), TypeError, "`logits`.*int32"),
        (lambda: SOFT(np.ones((4, 5), np.int32), D["probs"]), TypeError, "`logits`.*int32"),
        (lambda: SPARSE(D["logits"], D["labels"][:3]), ValueError, r"`labels`.*\(4,\).*got \(3,\)"),
        (
            lambda: SPARSE(D["logits"], D["labels"], class_weights=np.ones(4, np.float32)),
            ValueError,
            r"`class_weights`.*\(5,\).*got \(4,\)",
        ),
        (
            lambda: SPARSE(D["logits"], D["labels"], cost_matrix=np.ones((5, 4), np.float32)),
            ValueError,
            r"`cost_matrix` must be square.*\(5, 4\)",
        ),
        (
            lambda: SPARSE(D["logits"], D["labels"], cost_matrix=np.ones((4, 4), np.float32)),
            ValueError,
            r"`cost_matrix`.*\(5, 5\).*got \(4, 4\)",
        ),
        (
            lambda: SPARSE(D["logits"], D["labels"], weights=np.ones(3, np.float32)),
            ValueError,
            r"`weights` of shape \(3,\) does not broadcast.*\(4,\)",
        ),
        (
            lambda: SPARSE(D["logits"], D["labels"], where=np.ones(3, bool)),
            ValueError,
            r"`where` of shape \(3,\)",
        ),
        (
            lambda: SPARSE(D["logits"], D["labels"], label_smoothing=1.0),
            ValueError,
            r"`label_smoothing` must be in \[0, 1\)",
        ),
        (
            lambda: SOFT(D["logits"], D["probs"], label_smoothing=-0.1),
            ValueError,
            "`label_smoothing`",
        ),
        (
            lambda: SPARSE(D["logits"], D["labels"], z_loss=-1.0),
            ValueError,
            "`z_loss` must be >= 0",
        ),
        (
            lambda: SPARSE(D["logits"], D["labels"], reduction="avg"),
            ValueError,
            "`reduction` must be one of 'none', 'sum', 'mean', 'weighted_mean', "
            "'sum_by_nonzero_weights'; got 'avg'",
        ),
        (lambda: SOFT(D["logits"], D["probs"][:, :3]), ValueError, "`labels` of shape"),
        (lambda: SPARSE(D["logits"], D["labels"], axis=2), ValueError, "`axis` 2 is out of bounds"),
        (lambda: SPARSE(D["logits"], D["labels"], axis=1.0), TypeError, "`axis` must be an int"),
        (
            lambda: SPARSE(D["logits"], D["labels"], where=D["class_mask"], label_smoothing=0.1),
            ValueError,
            "`label_smoothing` with integer labels cannot be combined with a logits-shaped `where`",
        ),
        (lambda: SPARSE(np.float32(1.0), np.int32(0)), ValueError, "`logits` must have a class"),
    ],
)
def test_bad_input_raises_named_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_weights_must_not_enlarge_the_loss_shape():
    """(N,) weights against an (N, 1) loss are an error, not an (N, N) outer product."""
    logits = np.zeros((4, 1, 3), np.float32)
    labels = np.zeros((4, 1), np.int32)
    with pytest.raises(ValueError, match=r"`weights` of shape \(4,\).*\(4, 1\)"):
        SPARSE(logits, labels, weights=np.ones(4, np.float32))
    # Broadcastable weights that do not enlarge the shape are fine.
    assert SPARSE(logits, labels, weights=np.ones((1, 1), np.float32)).shape == (4, 1)


def test_errors_are_raised_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="`class_weights`"):
        jax.jit(lambda z, y: SPARSE(z, y, class_weights=jnp.ones(3)))(D["logits"], D["labels"])


# Every loss whose labels are shaped like its logits (or probabilities).
SHAPED_LABELS = [loss for loss in LOSSES if loss.name in FLOAT_LABELS]


@pytest.mark.parametrize("loss", SHAPED_LABELS, ids=str)
@pytest.mark.parametrize(
    ("logits_shape", "labels_shape", "message"),
    [
        # (N,) labels against (N, 1) logits: optax returns an (N, N) loss.
        ((5, 1), (5,), r"`labels` of shape \(5,\) does not broadcast to the \w+' shape \(5, 1\)"),
        ((1, 3), (4, 3), r"`labels` of shape \(4, 3\) does not broadcast.*\(1, 3\)"),
        ((2, 3), (2, 1), r"`labels` of shape \(2, 1\) has a class axis of size 1 against 3"),
    ],
    ids=["enlarges", "more_rows", "one_class"],
)
def test_labels_that_would_broadcast_raise_naming_the_shapes(
    loss, logits_shape, labels_shape, message
):
    """`docs/semantics.md`: labels follow the `weights` rule (optax would broadcast)."""
    predictions = np.full(logits_shape, 0.25, np.float32)
    labels = np.full(labels_shape, 0.5, np.float32)
    with pytest.raises(ValueError, match=message):
        loss.fn(predictions, labels)
    with pytest.raises(ValueError, match=message):
        jax.jit(loss.fn)(predictions, labels)


@pytest.mark.parametrize("loss", SHAPED_LABELS, ids=str)
def test_labels_without_leading_axes_broadcast_over_the_batch(loss):
    """One label row for every example is still fine: it does not enlarge the loss."""
    predictions = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], np.float32)
    labels = np.array([0.1, 0.7, 0.2], np.float32)
    expected = loss.fn(predictions, np.broadcast_to(labels, predictions.shape))
    np.testing.assert_array_equal(loss.fn(predictions, labels), expected)
