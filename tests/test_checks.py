"""Bad input: every error of SPEC §6 is raised at trace time, naming the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jwxent
from tests.test_softmax import make_inputs

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
