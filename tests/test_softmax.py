"""Softmax family: values against float64 NumPy, gradients against an autodiff twin."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jwxent
from tests import _references as ref
from tests._registry import REDUCTIONS
from tests._tolerance import assert_close

# The matrix (tests/test_matrix.py) covers [4, 3, 5]; these are the other shapes.
SHAPES = [(7,), (5, 1), (3, 13)]
IGNORE = -100


def make_inputs(shape, seed=0, dtype=np.float32):
    """Random logits, labels (some ignored), weights, masks and class weights."""
    rng = np.random.default_rng(seed)
    batch, num_classes = shape[:-1], shape[-1]
    labels = rng.integers(0, num_classes, size=batch)
    ignored = rng.random(batch) < 0.25
    return {
        "logits": (3 * rng.standard_normal(shape)).astype(dtype),
        "labels": labels.astype(np.int32),
        "labels_with_ignored": np.where(ignored, IGNORE, labels).astype(np.int32),
        "probs": rng.dirichlet(np.ones(num_classes), size=batch).astype(dtype),
        "weights": rng.uniform(0.0, 2.0, size=batch).astype(dtype),
        "where": rng.random(batch) < 0.7,
        "class_mask": (rng.random(shape) < 0.7) | (np.arange(num_classes) == 0),
        "class_weights": rng.uniform(0.1, 3.0, size=num_classes).astype(dtype),
        "cost_matrix": rng.uniform(0.0, 2.0, size=(num_classes, num_classes)).astype(dtype),
    }


# Each case maps the inputs to (labels key, keyword arguments).
INTEGER_CASES = {
    "plain": lambda d: ("labels", {}),
    "weights": lambda d: ("labels", {"weights": d["weights"]}),
    "class_weights": lambda d: ("labels", {"class_weights": d["class_weights"]}),
    "cost_matrix": lambda d: ("labels", {"cost_matrix": d["cost_matrix"]}),
    "ignore_index": lambda d: ("labels_with_ignored", {"ignore_index": IGNORE}),
    "where": lambda d: ("labels", {"where": d["where"]}),
    "label_smoothing": lambda d: ("labels", {"label_smoothing": 0.1}),
    "smoothing_class_weights": lambda d: (
        "labels",
        {"label_smoothing": 0.2, "class_weights": d["class_weights"]},
    ),
    "z_loss": lambda d: ("labels", {"z_loss": 1e-2, "class_weights": d["class_weights"]}),
    "everything": lambda d: (
        "labels_with_ignored",
        {
            "weights": d["weights"],
            "class_weights": d["class_weights"],
            "cost_matrix": d["cost_matrix"],
            "ignore_index": IGNORE,
            "where": d["where"],
            "label_smoothing": 0.1,
            "z_loss": 1e-3,
        },
    ),
}

PROBABILITY_CASES = {
    "plain": lambda d: {},
    "weights": lambda d: {"weights": d["weights"]},
    "class_weights": lambda d: {"class_weights": d["class_weights"]},
    "where": lambda d: {"where": d["where"]},
    "label_smoothing": lambda d: {"label_smoothing": 0.1},
    "smoothing_class_weights": lambda d: {
        "label_smoothing": 0.2,
        "class_weights": d["class_weights"],
    },
    "z_loss": lambda d: {"z_loss": 1e-2, "class_weights": d["class_weights"]},
    "everything": lambda d: {
        "weights": d["weights"],
        "class_weights": d["class_weights"],
        "where": d["where"],
        "label_smoothing": 0.1,
        "z_loss": 1e-3,
    },
}


def _terms(shape):
    return int(np.prod(shape))


# ---------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(INTEGER_CASES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_integer_labels_match_reference(shape, case):
    d = make_inputs(shape)
    label_key, kwargs = INTEGER_CASES[case](d)
    for reduction in REDUCTIONS:
        actual = jwxent.softmax_cross_entropy_with_integer_labels(
            d["logits"], d[label_key], reduction=reduction, **kwargs
        )
        expected = ref.softmax_cross_entropy_with_integer_labels(
            d["logits"], d[label_key], reduction=reduction, **kwargs
        )
        assert actual.dtype == jnp.float32
        assert actual.shape == np.shape(expected)
        assert_close(actual, expected, jnp.float32, terms=_terms(shape), err_msg=reduction)


@pytest.mark.parametrize("case", list(PROBABILITY_CASES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_probability_labels_match_reference(shape, case):
    d = make_inputs(shape)
    kwargs = PROBABILITY_CASES[case](d)
    for reduction in REDUCTIONS:
        actual = jwxent.softmax_cross_entropy(
            d["logits"], d["probs"], reduction=reduction, **kwargs
        )
        expected = ref.softmax_cross_entropy(d["logits"], d["probs"], reduction=reduction, **kwargs)
        assert_close(actual, expected, jnp.float32, terms=_terms(shape), err_msg=reduction)


@pytest.mark.parametrize("case", ["plain", "class_weights", "everything"])
@pytest.mark.parametrize("epsilon", [2.0, -1.0])
def test_poly_loss_matches_reference(case, epsilon):
    d = make_inputs((6, 5))
    kwargs = PROBABILITY_CASES[case](d)
    actual = jwxent.poly_loss_cross_entropy(d["logits"], d["probs"], epsilon, **kwargs)
    expected = ref.softmax_cross_entropy(d["logits"], d["probs"], poly_epsilon=epsilon, **kwargs)
    assert_close(actual, expected, jnp.float32, terms=30)


def test_logits_shaped_where_masks_classes():
    d = make_inputs((6, 8))
    class_mask = d["class_mask"]
    class_mask[2] = False  # a fully masked row gives 0
    integer = jwxent.softmax_cross_entropy_with_integer_labels(
        d["logits"], d["labels"], where=class_mask, class_weights=d["class_weights"]
    )
    assert_close(
        integer,
        ref.softmax_cross_entropy_with_integer_labels(
            d["logits"], d["labels"], class_mask=class_mask, class_weights=d["class_weights"]
        ),
        jnp.float32,
        terms=8,
    )
    soft = jwxent.softmax_cross_entropy(d["logits"], d["probs"], where=class_mask)
    assert_close(
        soft, ref.softmax_cross_entropy(d["logits"], d["probs"], class_mask=class_mask), jnp.float32
    )
    assert integer[2] == 0 and soft[2] == 0


def test_cost_matrix_argmax_ignores_masked_classes():
    logits = np.array([[5.0, 1.0, 0.0]], np.float32)
    class_mask = np.array([[False, True, True]])
    cost = np.arange(9, dtype=np.float32).reshape(3, 3)
    loss = jwxent.softmax_cross_entropy_with_integer_labels(
        logits, np.array([2]), where=class_mask, cost_matrix=cost
    )
    nll = np.log(np.exp(1.0) + 1.0) - 0.0
    assert_close(loss, [cost[2, 1] * nll], jnp.float32)


@pytest.mark.parametrize("axis", [0, 1, -2, (1, 2), (0, 2)])
def test_axis_matches_class_axis_last(axis):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((3, 4, 5)).astype(np.float32)
    axes = (axis,) if isinstance(axis, int) else axis
    axes = tuple(a % 3 for a in axes)
    batch_axes = tuple(a for a in range(3) if a not in axes)
    moved = np.transpose(logits, batch_axes + axes).reshape(
        tuple(logits.shape[a] for a in batch_axes) + (-1,)
    )
    labels = rng.integers(0, moved.shape[-1], size=moved.shape[:-1]).astype(np.int32)
    cw = rng.uniform(0.5, 2.0, size=moved.shape[-1]).astype(np.float32)
    actual = jwxent.softmax_cross_entropy_with_integer_labels(
        logits, labels, axis=axis, class_weights=cw
    )
    expected = ref.softmax_cross_entropy_with_integer_labels(moved, labels, class_weights=cw)
    assert_close(actual, expected, jnp.float32, terms=20)
    probs = np.exp(moved) / np.exp(moved).sum(-1, keepdims=True)
    unmoved = np.transpose(
        probs.reshape(tuple(logits.shape[a] for a in batch_axes + axes)),
        np.argsort(batch_axes + axes),
    )
    actual_soft = jwxent.softmax_cross_entropy(logits, unmoved, axis=axis, class_weights=cw)
    assert_close(
        actual_soft, ref.softmax_cross_entropy(moved, probs, class_weights=cw), jnp.float32, 20
    )


# ---------------------------------------------------------------------------
# Gradients: custom VJP against the plain-JAX autodiff twin, in float64.
# ---------------------------------------------------------------------------

DIFFERENTIABLE = ("logits", "weights", "class_weights", "cost_matrix", "probs")


def test_cost_matrix_gradient_is_zero_through_argmax():
    d = make_inputs((4, 5), seed=7)

    def loss(logits):
        return jwxent.softmax_cross_entropy_with_integer_labels(
            logits, d["labels"], cost_matrix=d["cost_matrix"], reduction="sum"
        )

    def fixed_weight_loss(logits):
        predicted = np.argmax(d["logits"], -1)
        weights = d["cost_matrix"][d["labels"], predicted]
        return jwxent.softmax_cross_entropy_with_integer_labels(
            logits, d["labels"], weights=weights, reduction="sum"
        )

    assert_close(jax.grad(loss)(d["logits"]), jax.grad(fixed_weight_loss)(d["logits"]), jnp.float32)


def test_integer_labels_have_no_cotangent():
    d = make_inputs((3, 4))
    _, vjp = jax.vjp(
        lambda z: jwxent.softmax_cross_entropy_with_integer_labels(z, d["labels"]),
        jnp.asarray(d["logits"]),
    )
    (grad,) = vjp(jnp.ones(3))
    assert grad.shape == (3, 4)


# ---------------------------------------------------------------------------
# Dtypes and numerics.
# ---------------------------------------------------------------------------


def test_masked_rows_have_exactly_zero_gradient_even_with_nan_logits():
    d = make_inputs((5, 4), seed=11)
    logits = d["logits"].copy()
    where = np.array([True, False, True, False, True])
    logits[1] = np.nan
    logits[3] = np.inf

    def loss(z):
        return jwxent.softmax_cross_entropy_with_integer_labels(
            z, d["labels"], where=where, z_loss=1e-2, reduction="weighted_mean"
        )

    value, grad = jax.value_and_grad(loss)(jnp.asarray(logits))
    assert np.isfinite(value)
    assert np.all(grad[~where] == 0) and np.all(np.isfinite(grad))


# ---------------------------------------------------------------------------
# Out-of-range labels and determinism.
# ---------------------------------------------------------------------------


def test_ignored_and_masked_labels_may_be_out_of_range():
    d = make_inputs((3, 4), seed=16)
    labels = np.array([IGNORE, 99, 1], np.int32)
    loss = jwxent.softmax_cross_entropy_with_integer_labels(
        d["logits"], labels, ignore_index=IGNORE, where=np.array([True, False, True])
    )
    assert loss[0] == 0 and loss[1] == 0 and np.isfinite(loss[2])


def test_same_call_twice_gives_same_bits_and_mutates_nothing():
    d = make_inputs((16, 11), seed=17)
    before = {k: np.array(v, copy=True) for k, v in d.items()}
    kwargs = {"class_weights": d["class_weights"], "weights": d["weights"], "reduction": "sum"}
    first = jwxent.softmax_cross_entropy_with_integer_labels(d["logits"], d["labels"], **kwargs)
    second = jwxent.softmax_cross_entropy_with_integer_labels(d["logits"], d["labels"], **kwargs)
    assert np.asarray(first).tobytes() == np.asarray(second).tobytes()
    for key, value in before.items():
        np.testing.assert_array_equal(d[key], value)


@pytest.mark.parametrize(
    "name",
    ["softmax_cross_entropy", "poly_loss_cross_entropy", "softmax_focal_loss"],
)
def test_an_empty_class_axis_is_an_empty_sum(name):
    """optax's masking test selects `logits[mask]`, empty when no class is kept:
    every loss over no class is 0, with an empty gradient."""
    logits, labels = np.zeros((3, 0), np.float32), np.zeros((3, 0), np.float32)
    f = lambda z, q: getattr(jwxent, name)(z, q, z_loss=0.1, reduction="sum")
    value, (dz, dq) = jax.jit(jax.value_and_grad(f, (0, 1)))(logits, labels)
    assert float(value) == 0.0 and dz.shape == dq.shape == (3, 0)
    np.testing.assert_array_equal(getattr(jwxent, name)(logits[0], labels[0]), 0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        getattr(jwxent, name)(logits, labels, label_smoothing=0.1)
