"""Probability-input losses (Keras `from_logits=False`): values and gradients vs float64."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jwxent
from tests import _references as ref
from tests._registry import REDUCTIONS
from tests._tolerance import assert_close

SHAPES = [(7,), (4, 7), (2, 3, 9), (5, 1), (3, 13)]


def make_inputs(shape, seed=0, dtype=np.float32):
    """Random probabilities (softmax rows, independent binary ones), labels, weights."""
    rng = np.random.default_rng(seed)
    batch, num_classes = shape[:-1], shape[-1]
    labels = rng.integers(0, num_classes, size=batch)
    return {
        "probs": rng.dirichlet(np.ones(num_classes), size=batch).astype(dtype),
        "one_hot": np.eye(num_classes, dtype=dtype)[labels],
        "soft": rng.dirichlet(np.ones(num_classes), size=batch).astype(dtype),
        "binary_probs": rng.uniform(0.02, 0.98, size=shape).astype(dtype),
        "binary_labels": (rng.random(shape) < 0.4).astype(dtype),
        "weights": rng.uniform(0.0, 2.0, size=batch).astype(dtype),
        "where": rng.random(batch) < 0.7,
        "class_weights": rng.uniform(0.1, 3.0, size=num_classes).astype(dtype),
        "pos_weight": rng.uniform(0.5, 4.0, size=num_classes).astype(dtype),
    }


# Each case maps the inputs to (probs key, labels key, keyword arguments).
CATEGORICAL_CASES = {
    "plain": lambda d: ("probs", "one_hot", {}),
    "soft": lambda d: ("probs", "soft", {}),
    "weights": lambda d: ("probs", "one_hot", {"weights": d["weights"]}),
    "class_weights": lambda d: ("probs", "soft", {"class_weights": d["class_weights"]}),
    "where": lambda d: ("probs", "one_hot", {"where": d["where"]}),
    "label_smoothing": lambda d: ("probs", "one_hot", {"label_smoothing": 0.1}),
    "epsilon": lambda d: ("probs", "one_hot", {"epsilon": 0.05}),
    "everything": lambda d: (
        "probs",
        "soft",
        {
            "weights": d["weights"],
            "class_weights": d["class_weights"],
            "where": d["where"],
            "label_smoothing": 0.2,
            "epsilon": 0.01,
        },
    ),
}

BINARY_CASES = {
    "plain": lambda d: ("binary_probs", "binary_labels", {}),
    "soft": lambda d: ("binary_probs", "binary_probs", {}),
    "pos_weight": lambda d: ("binary_probs", "binary_labels", {"pos_weight": d["pos_weight"]}),
    "weights": lambda d: ("binary_probs", "binary_labels", {"weights": d["weights"]}),
    "where": lambda d: ("binary_probs", "binary_labels", {"where": d["where"]}),
    "label_smoothing": lambda d: ("binary_probs", "binary_labels", {"label_smoothing": 0.1}),
    "epsilon": lambda d: ("binary_probs", "binary_labels", {"epsilon": 0.05}),
    "everything": lambda d: (
        "binary_probs",
        "binary_labels",
        {
            "pos_weight": d["pos_weight"],
            "weights": d["weights"],
            "where": d["where"],
            "label_smoothing": 0.2,
            "epsilon": 0.03,
        },
    ),
}


def reductions_of(case):
    """Every reduction for the "everything" case, two for the others."""
    return REDUCTIONS if case == "everything" else ["none", "weighted_mean"]


def shapes_and_cases(cases):
    """Every shape for the "plain" and "everything" cases, one shape for the others."""
    return [
        (shape, case)
        for case in cases
        for shape in (SHAPES if case in ("plain", "everything") else SHAPES[1:2])
    ]


def jit_call(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` under `jax.jit` (compiling once is far cheaper than op-by-op
    dispatch on new shapes); array keywords are traced, the others static."""
    arrays = {k: v for k, v in kwargs.items() if isinstance(v, np.ndarray | jax.Array)}
    static = {k: v for k, v in kwargs.items() if k not in arrays}
    return jax.jit(lambda *a, **kw: fn(*a, **kw, **static))(*args, **arrays)


# ---------------------------------------------------------------------------
# Hand-derived float64 gradients of the clipped formulas, with respect to `probs`.
# ---------------------------------------------------------------------------


def _unclipped(p_hat, epsilon, dtype):
    """1 where Keras's clip left the value alone, 0 where it clipped it."""
    low, high = float(np.asarray(epsilon, dtype)), float(np.asarray(1 - epsilon, dtype))
    return ((p_hat > low) & (p_hat < high)).astype(np.float64)


def categorical_probs_gradient(probs, labels, *, epsilon=1e-7, class_weights=None, weights=None):
    """d/dp of `Σ_i w_i·ℓ_i`: with `S = Σ p`, `u` unclipped and `t = c·q`,
    `dℓ/dp_j = (−t_j·u_j / p̂_j + Σ_k t_k·u_k) / S`."""
    p, q = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
    total = p.sum(axis=-1, keepdims=True)
    p_hat = ref.keras_clip(p / total, epsilon, np.float32)
    u = _unclipped(p / total, epsilon, np.float32)
    t = q if class_weights is None else q * np.asarray(class_weights, np.float64)
    grad = (-t * u / p_hat + np.sum(t * u, axis=-1, keepdims=True)) / total
    return grad if weights is None else grad * np.asarray(weights, np.float64)[..., None]


def binary_probs_gradient(probs, labels, *, epsilon=1e-7, pos_weight=None, weights=None):
    """d/dp of `Σ_i w_i·ℓ_i`: `−u·(c·y / p̂ − (1 − y) / (1 − p̂)) / L` per element."""
    p, y = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
    p_hat, u = ref.keras_clip(p, epsilon, np.float32), _unclipped(p, epsilon, np.float32)
    c = 1.0 if pos_weight is None else np.asarray(pos_weight, np.float64)
    grad = -u * (c * y / p_hat - (1.0 - y) / (1.0 - p_hat)) / p.shape[-1]
    return grad if weights is None else grad * np.asarray(weights, np.float64)[..., None]


# ---------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------


def _assert_matches_reference(fn, reference, cases, shape, case):
    """All reductions of one case, in one jitted call, against the reference."""
    data = make_inputs(shape, seed=len(shape) + len(case))
    probs_key, labels_key, kwargs = cases[case](data)
    args = (data[probs_key], data[labels_key])
    reductions = reductions_of(case)
    actual = jit_call(
        lambda *a, **k: {r: fn(*a, **k, reduction=r) for r in reductions}, *args, **kwargs
    )
    for reduction in reductions:
        expected = reference(*args, **kwargs, clip_dtype=np.float32, reduction=reduction)
        assert actual[reduction].shape == np.shape(expected)
        assert actual[reduction].dtype == jnp.float32
        assert_close(actual[reduction], expected, np.float32, int(np.prod(shape)), reduction)


@pytest.mark.parametrize(("shape", "case"), shapes_and_cases(CATEGORICAL_CASES), ids=str)
def test_categorical_matches_reference(shape, case):
    _assert_matches_reference(
        jwxent.categorical_cross_entropy,
        ref.categorical_cross_entropy,
        CATEGORICAL_CASES,
        shape,
        case,
    )


@pytest.mark.parametrize(("shape", "case"), shapes_and_cases(BINARY_CASES), ids=str)
def test_binary_matches_reference(shape, case):
    _assert_matches_reference(
        jwxent.binary_cross_entropy, ref.binary_cross_entropy, BINARY_CASES, shape, case
    )


def test_keras_documented_examples():
    # The examples in keras.losses.categorical_crossentropy / binary_crossentropy.
    categorical = jit_call(
        jwxent.categorical_cross_entropy,
        jnp.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]),
        jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
    )
    np.testing.assert_allclose(categorical, [0.0513, 2.303], atol=1e-3)
    binary = jit_call(
        jwxent.binary_cross_entropy,
        jnp.array([[0.6, 0.4], [0.4, 0.6]]),
        jnp.array([[0.0, 1.0], [0.0, 0.0]]),
    )
    np.testing.assert_allclose(binary, [0.916, 0.714], atol=1e-3)


def test_keras_imbalanced_data_recipe():
    # Keras's "classification on imbalanced data": one sigmoid output per example,
    # predictions and labels of shape (1000, 1), and `fit(class_weight={0: 1, 1: 9})`,
    # which Keras turns into per-example sample weights gathered by label. The default
    # reduction, sum_over_batch_size, divides the weighted sum by the batch size.
    rng = np.random.default_rng(20)
    labels = (rng.random((1000, 1)) < 0.1).astype(np.float32)
    predictions = np.clip(0.6 * labels + 0.4 * rng.random((1000, 1)), 0.0, 1.0)
    predictions[:3] = [[0.0], [1.0], [1.0]]  # Exactly 0 and 1 are clipped, never inf.
    predictions = predictions.astype(np.float32)
    sample_weight = np.where(labels[:, 0] == 1, 9.0, 1.0).astype(np.float32)

    actual = jit_call(
        jwxent.binary_cross_entropy, predictions, labels, weights=sample_weight, reduction="mean"
    )
    # By hand, in float64: Keras clips to [1e-7, 1 − 1e-7], the upper bound rounded to
    # float32 (1 − 2⁻²³), then −(y·log p + (1 − y)·log(1 − p)), weighted, over 1000.
    p = np.clip(predictions[:, 0].astype(np.float64), 1e-7, 1.0 - 2.0**-23)
    y = labels[:, 0].astype(np.float64)
    bce = -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))
    assert_close(actual, np.sum(sample_weight * bce) / 1000.0, np.float32, terms=1000)
    per_example = jit_call(jwxent.binary_cross_entropy, predictions, labels)
    assert per_example.shape == (1000,)
    assert_close(per_example, bce, np.float32)


def test_binary_on_sigmoid_is_the_mean_of_the_elementwise_logit_loss():
    data = make_inputs((6, 4), seed=21)
    logits = jnp.asarray(3 * data["binary_probs"] - 1.5)
    labels = jnp.asarray(data["binary_labels"])
    on_probs = jit_call(jwxent.binary_cross_entropy, jax.nn.sigmoid(logits), labels)
    on_logits = jit_call(jwxent.sigmoid_binary_cross_entropy, logits, labels)
    assert_close(on_probs, jnp.mean(on_logits, axis=-1), np.float32, terms=4)


def test_categorical_renormalises_the_probabilities():
    data = make_inputs((4, 5), seed=22)
    scaled = 3.0 * data["probs"]
    actual = jit_call(jwxent.categorical_cross_entropy, scaled, data["soft"])
    assert_close(
        actual, jit_call(jwxent.categorical_cross_entropy, data["probs"], data["soft"]), np.float32
    )


@pytest.mark.parametrize("axis", [0, -2])
def test_categorical_axis(axis):
    data = make_inputs((2, 3, 5), seed=23)
    probs = np.moveaxis(data["probs"], -1, axis)
    labels = np.moveaxis(data["soft"], -1, axis)
    actual = jit_call(jwxent.categorical_cross_entropy, probs, labels, axis=axis)
    expected = ref.categorical_cross_entropy(data["probs"], data["soft"], clip_dtype=np.float32)
    assert_close(actual, expected, np.float32)


# ---------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [1e-7, 0.1])
def test_categorical_gradient_is_that_of_the_clipped_formula(epsilon):
    data = make_inputs((5, 6), seed=24)
    probs = data["probs"].copy()
    probs[0, :2] = 0.0  # Clipped from below.
    probs[1] = [1.0, 0, 0, 0, 0, 0]  # Clipped from above and below.
    kwargs = {"class_weights": data["class_weights"], "weights": data["weights"]}

    def loss(p):
        return jwxent.categorical_cross_entropy(
            p, data["soft"], epsilon=epsilon, **kwargs, reduction="sum"
        )

    grad = jax.jit(jax.grad(loss))(probs)
    expected = categorical_probs_gradient(probs, data["soft"], epsilon=epsilon, **kwargs)
    assert_close(grad, expected, np.float32, terms=6)


@pytest.mark.parametrize("epsilon", [1e-7, 0.1])
def test_binary_gradient_is_that_of_the_clipped_formula(epsilon):
    data = make_inputs((5, 6), seed=25)
    probs = data["binary_probs"].copy()
    probs[0, :3] = [0.0, 1.0, 0.05]
    kwargs = {"pos_weight": data["pos_weight"], "weights": data["weights"]}

    def loss(p):
        return jwxent.binary_cross_entropy(
            p, data["binary_labels"], epsilon=epsilon, **kwargs, reduction="sum"
        )

    grad = jax.jit(jax.grad(loss))(probs)
    expected = binary_probs_gradient(probs, data["binary_labels"], epsilon=epsilon, **kwargs)
    assert_close(grad, expected, np.float32)
    assert grad[0, 0] == 0.0 and grad[0, 1] == 0.0  # Clipped: no gradient.


# ---------------------------------------------------------------------------
# Dtypes and numerics.
# ---------------------------------------------------------------------------


def test_float32_clip_bounds_follow_keras():
    # In float32, 1 − 1e-7 rounds to 1 − 2⁻²³, so a certain wrong "1" costs
    # −log(2⁻²³) = 23·log 2 and a certain wrong "0" costs −log(1e-7), as in Keras.
    probs = jnp.array([[1.0], [0.0]])
    labels = jnp.array([[0.0], [1.0]])
    loss = jit_call(jwxent.binary_cross_entropy, probs, labels)
    np.testing.assert_allclose(loss, [23 * math.log(2.0), -math.log(1e-7)], rtol=1e-6)


def test_masked_rows_of_zeros_have_exactly_zero_gradient():
    probs = jnp.array([[0.2, 0.8], [0.0, 0.0], [jnp.nan, 0.5]])
    labels = jnp.array([[0.0, 1.0], [1.0, 0.0], [jnp.nan, 1.0]])
    where = jnp.array([True, False, False])
    for fn in (jwxent.categorical_cross_entropy, jwxent.binary_cross_entropy):
        f = lambda p, y, fn=fn: fn(p, y, where=where, reduction="mean")
        loss, (d_p, d_y) = jax.jit(jax.value_and_grad(f, (0, 1)))(probs, labels)
        assert np.isfinite(loss)
        np.testing.assert_array_equal(d_p[1:], 0.0)
        np.testing.assert_array_equal(d_y[1:], 0.0)
        reference = getattr(ref, fn.__name__)
        expected = reference(np.asarray(probs[:1]), np.asarray(labels[:1]), clip_dtype=np.float32)
        assert_close(loss, expected[0], np.float32)


# ---------------------------------------------------------------------------
# Transformations.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


def test_integer_probs_raise_type_error():
    with pytest.raises(TypeError, match="`probs` must be a floating-point array, got dtype int32"):
        jwxent.categorical_cross_entropy(jnp.ones((2, 3), jnp.int32), jnp.ones((2, 3)))


def test_integer_pos_weight_raises_type_error():
    with pytest.raises(TypeError, match="`pos_weight` must be a floating-point array"):
        jwxent.binary_cross_entropy(jnp.ones((2, 3)), jnp.ones((2, 3)), pos_weight=jnp.ones(3, int))


def test_shape_errors_raise():
    with pytest.raises(ValueError, match=r"`labels` of shape \(2, 4\) does not broadcast"):
        jwxent.categorical_cross_entropy(jnp.ones((2, 3)), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"`pos_weight` of shape \(2,\) does not broadcast"):
        jwxent.binary_cross_entropy(jnp.ones((2, 3)), jnp.ones((2, 3)), pos_weight=jnp.ones(2))
    with pytest.raises(ValueError, match=r"`class_weights` must have shape \(3,\)"):
        jwxent.categorical_cross_entropy(
            jnp.ones((2, 3)), jnp.ones((2, 3)), class_weights=jnp.ones(2)
        )
    # One binary decision per example is an [N, 1] array: [N] probs give one loss.
    with pytest.raises(ValueError, match=r"`weights` of shape \(4,\) does not broadcast"):
        jwxent.binary_cross_entropy(jnp.ones(4), jnp.ones(4), weights=jnp.ones(4))


def test_bad_options_raise():
    with pytest.raises(ValueError, match=r"`epsilon` must be in \[0, 0.5\); got 0.6"):
        jwxent.binary_cross_entropy(jnp.ones((2, 3)), jnp.ones((2, 3)), epsilon=0.6)
    with pytest.raises(ValueError, match=r"`axis` 2 is out of bounds for probs of rank 2"):
        jwxent.categorical_cross_entropy(jnp.ones((2, 3)), jnp.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match="`probs` must have a class axis"):
        jwxent.categorical_cross_entropy(jnp.ones(()), jnp.ones(()))
    with pytest.raises(ValueError, match=r"`label_smoothing` must be in \[0, 1\)"):
        jwxent.categorical_cross_entropy(jnp.ones((2, 3)), jnp.ones((2, 3)), label_smoothing=-0.1)
