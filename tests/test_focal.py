"""Softmax focal losses: values against float64 NumPy, gradients against an autodiff twin."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jwxent
from tests import _references as ref
from tests._registry import REDUCTIONS
from tests._tolerance import assert_close

SHAPES = [(7,), (4, 7), (2, 3, 9), (5, 1), (3, 13)]
IGNORE = -100


def make_inputs(shape, seed=0, dtype=np.float32):
    """Random logits, labels (some ignored), probabilities, weights, masks, class weights."""
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
        "class_weights": rng.uniform(0.1, 3.0, size=num_classes).astype(dtype),
    }


# Each case maps the inputs to (labels key, keyword arguments); "probs" cases use
# the probability labels, the others the integer ones.
INTEGER_CASES = {
    "plain": lambda d: ("labels", {}),
    "gamma_half": lambda d: ("labels", {"gamma": 0.5}),
    "weights": lambda d: ("labels", {"weights": d["weights"]}),
    "class_weights": lambda d: ("labels", {"class_weights": d["class_weights"]}),
    "ignore_index": lambda d: ("labels_with_ignored", {"ignore_index": IGNORE}),
    "where": lambda d: ("labels", {"where": d["where"]}),
    "label_smoothing": lambda d: ("labels", {"label_smoothing": 0.1, "gamma": 1.0}),
    "everything": lambda d: (
        "labels_with_ignored",
        {
            "gamma": 3.0,
            "weights": d["weights"],
            "class_weights": d["class_weights"],
            "ignore_index": IGNORE,
            "where": d["where"],
            "label_smoothing": 0.2,
        },
    ),
}

PROBABILITY_CASES = {
    "plain": lambda d: {},
    "gamma_half": lambda d: {"gamma": 0.5},
    "weights": lambda d: {"weights": d["weights"]},
    "class_weights": lambda d: {"class_weights": d["class_weights"]},
    "where": lambda d: {"where": d["where"]},
    "label_smoothing": lambda d: {"label_smoothing": 0.1},
    "everything": lambda d: {
        "gamma": 1.5,
        "weights": d["weights"],
        "class_weights": d["class_weights"],
        "where": d["where"],
        "label_smoothing": 0.1,
    },
}


def reductions_of(case):
    """Every reduction for the "everything" case, two for the others."""
    return REDUCTIONS if case == "everything" else ["none", "weighted_mean"]


def shapes_and_cases(cases):
    """Every shape for the "everything" case, one shape for the others."""
    return [
        (shape, case)
        for case in cases
        for shape in (SHAPES if case == "everything" else SHAPES[1:2])
    ]


def jit_call(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` under `jax.jit` (compiling once is far cheaper than op-by-op
    dispatch on new shapes); array keywords are traced, the others static."""
    arrays = {k: v for k, v in kwargs.items() if isinstance(v, np.ndarray | jax.Array)}
    static = {k: v for k, v in kwargs.items() if k not in arrays}
    return jax.jit(lambda *a, **kw: fn(*a, **kw, **static))(*args, **arrays)


def all_reductions(fn, reductions):
    return lambda *args, **kwargs: {r: fn(*args, **kwargs, reduction=r) for r in reductions}


def _jnp(kwargs, dtype=None):
    return {
        k: jnp.asarray(v, dtype if v.dtype.kind == "f" else None)
        if isinstance(v, np.ndarray)
        else v
        for k, v in kwargs.items()
    }


# ---------------------------------------------------------------------------
# Plain-JAX autodiff twin (no custom VJP).
# ---------------------------------------------------------------------------


def focal_twin(
    logits,
    labels,
    *,
    gamma=2.0,
    where=None,
    weights=None,
    class_weights=None,
    label_smoothing=0.0,
    ignore_index=None,
    reduction="none",
):
    """Both focal losses in plain JAX; integer labels become a one-hot here."""
    num_classes = logits.shape[-1]
    integer = jnp.issubdtype(labels.dtype, jnp.integer)
    mask = jnp.ones(logits.shape[:-1], bool)
    if where is not None:
        mask = mask & jnp.broadcast_to(where, mask.shape)
    if ignore_index is not None:
        mask = mask & (labels != ignore_index)
    if integer:
        labels = jax.nn.one_hot(jnp.where(mask, labels, 0), num_classes, dtype=logits.dtype)
    z = jnp.where(mask[..., None], logits, 0.0)
    log_p = jax.nn.log_softmax(z, axis=-1)
    cw = jnp.ones(num_classes, z.dtype) if class_weights is None else class_weights
    cw_rows = jnp.broadcast_to(cw, z.shape)
    targets = cw_rows * ((1.0 - label_smoothing) * labels + label_smoothing / num_classes)
    loss = -jnp.sum(targets * (1.0 - jnp.exp(log_p)) ** gamma * log_p, axis=-1)
    label_weight = jnp.ones(mask.shape, z.dtype)
    if class_weights is not None:
        label_weight = jnp.sum(cw_rows * labels, axis=-1)
    example_weight = jnp.ones(mask.shape, z.dtype) if weights is None else weights
    return ref._jax_reduce(example_weight * loss, reduction, mask, example_weight * label_weight)


# ---------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------


def _assert_matches_reference(fn, reference, shape, case, labels_key, kwargs):
    """All reductions of one case, computed in one jitted call, against the reference."""
    data = make_inputs(shape, seed=len(shape) + len(case))
    reductions = reductions_of(case)
    args = (data["logits"], data[labels_key])
    actual = jit_call(all_reductions(fn, reductions), *args, **kwargs)
    for reduction in reductions:
        expected = reference(*args, **kwargs, reduction=reduction)
        assert actual[reduction].shape == np.shape(expected)
        assert actual[reduction].dtype == jnp.float32
        assert_close(actual[reduction], expected, np.float32, int(np.prod(shape)), reduction)


@pytest.mark.parametrize(("shape", "case"), shapes_and_cases(INTEGER_CASES), ids=str)
def test_integer_labels_match_reference(shape, case):
    labels_key, kwargs = INTEGER_CASES[case](make_inputs(shape, seed=len(shape) + len(case)))
    _assert_matches_reference(
        jwxent.softmax_focal_loss_with_integer_labels,
        ref.softmax_focal_loss_with_integer_labels,
        shape,
        case,
        labels_key,
        kwargs,
    )


@pytest.mark.parametrize(("shape", "case"), shapes_and_cases(PROBABILITY_CASES), ids=str)
def test_probability_labels_match_reference(shape, case):
    kwargs = PROBABILITY_CASES[case](make_inputs(shape, seed=len(shape) + len(case)))
    _assert_matches_reference(
        jwxent.softmax_focal_loss, ref.softmax_focal_loss, shape, case, "probs", kwargs
    )


def test_keras_documented_example():
    # keras.losses.categorical_focal_crossentropy's docstring, alpha=0.25, gamma=2:
    # probabilities that sum to 1 are their own softmax of their logarithm.
    y_pred = jnp.array([[0.05, 0.9, 0.05], [0.1, 0.85, 0.05]])
    y_true = jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    loss = jit_call(
        jwxent.softmax_focal_loss, jnp.log(y_pred), y_true, class_weights=jnp.full(3, 0.25)
    )
    np.testing.assert_allclose(loss, [2.63401289e-04, 6.75912094e-01], rtol=1e-5)


def test_logits_shaped_where_masks_classes():
    data = make_inputs((4, 6), seed=3)
    class_mask = np.random.default_rng(3).random((4, 6)) < 0.7
    class_mask[:, 0] = True
    class_mask[2] = False
    probs = np.where(class_mask, data["probs"], 0.0)
    actual = jit_call(
        jwxent.softmax_focal_loss, data["logits"], probs, where=class_mask, reduction="sum"
    )
    expected = ref.softmax_focal_loss(data["logits"], probs, class_mask=class_mask, reduction="sum")
    assert_close(actual, expected, np.float32, terms=24)
    labels = np.zeros(4, np.int32)
    actual = jit_call(
        jwxent.softmax_focal_loss_with_integer_labels,
        data["logits"],
        labels,
        where=class_mask,
        gamma=1.0,
    )
    expected = ref.softmax_focal_loss(
        data["logits"], np.eye(6)[labels], class_mask=class_mask, gamma=1.0
    )
    assert_close(actual, expected, np.float32)


@pytest.mark.parametrize("axis", [0, -2, (1, 2)])
def test_axis_matches_class_axis_last(axis):
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((3, 4, 5)).astype(np.float32)
    if isinstance(axis, tuple):
        logits_last = logits.reshape(3, 20)
        probs_last = rng.dirichlet(np.ones(20), size=3).astype(np.float32)
        probs = probs_last.reshape(3, 4, 5)
    else:
        logits_last = np.moveaxis(logits, axis, -1)
        probs_last = rng.dirichlet(np.ones(logits_last.shape[-1]), size=logits_last.shape[:-1])
        probs = np.moveaxis(probs_last.astype(np.float32), -1, axis)
    actual = jit_call(jwxent.softmax_focal_loss, logits, probs, axis=axis, gamma=1.0)
    assert_close(actual, ref.softmax_focal_loss(logits_last, probs_last, gamma=1.0), np.float32)
    labels = np.argmax(probs_last, axis=-1).astype(np.int32)
    actual = jit_call(
        jwxent.softmax_focal_loss_with_integer_labels, logits, labels, axis=axis, gamma=1.0
    )
    expected = ref.softmax_focal_loss_with_integer_labels(logits_last, labels, gamma=1.0)
    assert_close(actual, expected, np.float32)


# ---------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------


# The other keywords are linear outside the cores; "everything" covers them too.
GRADIENT_CASES = ["plain", "class_weights", "label_smoothing", "everything"]


def _grads_against_twin(fn, case, labels_key, kwargs, differentiate):
    """Gradients of the `differentiate` arguments present, jwxent (float32) vs twin
    (float64), for each reduction of the case, all in one jitted call."""
    data = {**make_inputs((3, 5), seed=7), **kwargs}
    names = [n for n in differentiate if n in ("logits", labels_key) or n in kwargs]
    fixed = {k: v for k, v in kwargs.items() if k not in names}
    reductions = reductions_of(case)

    def grads(f, arrays, static):
        def loss(arrays, reduction):
            arrays = dict(arrays)
            logits, labels = arrays.pop("logits"), arrays.pop(labels_key)
            return jnp.sum(f(logits, labels, **arrays, **static, reduction=reduction))

        return {r: jax.grad(loss, allow_int=True)(arrays, r) for r in reductions}

    def run(f, dtype):
        arrays = {n: jnp.asarray(data[n], dtype) for n in names}
        arrays[labels_key] = jnp.asarray(data[labels_key], dtype if labels_key == "probs" else None)
        static = _jnp(fixed, dtype)
        return jax.jit(lambda a: grads(f, a, static))(arrays)

    actual = run(fn, jnp.float32)
    with jax.enable_x64(True):
        expected = jax.tree.map(np.asarray, run(focal_twin, jnp.float64))
    for reduction in reductions:
        for name in names:
            got = actual[reduction][name]
            assert got.dtype == jnp.float32
            assert_close(got, expected[reduction][name], np.float32, 15, f"{reduction}: {name}")


# Order 2 checks order 1 as well.


@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize(
    ("focal", "cross_entropy", "labels_key"),
    [
        (
            jwxent.softmax_focal_loss_with_integer_labels,
            jwxent.softmax_cross_entropy_with_integer_labels,
            "labels",
        ),
        (jwxent.softmax_focal_loss, jwxent.softmax_cross_entropy, "probs"),
    ],
    ids=["integer", "probability"],
)
def test_gamma_zero_is_class_weighted_cross_entropy(
    focal, cross_entropy, labels_key, label_smoothing
):
    data = make_inputs((4, 6), seed=10)
    labels, weights = data[labels_key], data["weights"]

    def value_and_grad(f):
        def loss(z, cw):
            return f(
                z,
                labels,
                weights=weights,
                class_weights=cw,
                label_smoothing=label_smoothing,
                reduction="weighted_mean",
            )

        return jax.jit(jax.value_and_grad(loss, (0, 1)))(data["logits"], data["class_weights"])

    loss, grads = value_and_grad(lambda *a, **k: focal(*a, gamma=0.0, **k))
    expected_loss, expected_grads = value_and_grad(cross_entropy)
    assert_close(loss, expected_loss, np.float32, terms=24)
    for actual, expected in zip(grads, expected_grads, strict=True):
        assert_close(actual, expected, np.float32, terms=24)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_integer_labels_equal_one_hot_probability_labels(label_smoothing):
    data = make_inputs((2, 3, 5), seed=11)
    one_hot = np.eye(5, dtype=np.float32)[data["labels"]]
    kwargs = {"class_weights": data["class_weights"], "label_smoothing": label_smoothing}

    def value_and_grad(f, labels):
        loss = lambda z: jnp.sum(f(z, labels, **kwargs))
        return jax.jit(jax.value_and_grad(loss))(data["logits"])

    loss, grad = value_and_grad(jwxent.softmax_focal_loss_with_integer_labels, data["labels"])
    expected_loss, expected_grad = value_and_grad(jwxent.softmax_focal_loss, one_hot)
    assert_close(loss, expected_loss, np.float32, terms=6)
    assert_close(grad, expected_grad, np.float32)


def test_integer_labels_have_no_cotangent():
    data = make_inputs((3, 4))
    f = lambda z, y: jnp.sum(jwxent.softmax_focal_loss_with_integer_labels(z, y))
    d_labels = jax.jit(lambda z, y: jax.vjp(f, z, y)[1](jnp.ones(()))[1])(
        jnp.asarray(data["logits"]), jnp.asarray(data["labels"])
    )
    assert d_labels.dtype == jax.dtypes.float0


# ---------------------------------------------------------------------------
# Dtypes and numerics.
# ---------------------------------------------------------------------------


EXTREME_CASES = {
    "integer": (jwxent.softmax_focal_loss_with_integer_labels, np.array([0, 2]), {}),
    "integer_smoothing": (
        jwxent.softmax_focal_loss_with_integer_labels,
        np.array([0, 2]),
        {"label_smoothing": 0.1},
    ),
    "probability": (jwxent.softmax_focal_loss, np.array([[0.7, 0.0, 0.3], [0.0, 0.5, 0.5]]), {}),
}


MASKED_LABELS = {
    "softmax_focal_loss": np.array([[1.0, 0.0, 0.0], [np.nan, 0.0, 0.0], [0.2, 0.3, 0.5]]),
    "softmax_focal_loss_with_integer_labels": np.array([0, 7, 2]),
}


@pytest.mark.parametrize("fn", list(MASKED_LABELS))
def test_masked_rows_have_exactly_zero_gradient_even_with_nan(fn):
    logits = jnp.array([[0.3, 1.0, -1.0], [jnp.nan, jnp.inf, 0.0], [2.0, 0.0, 1.0]])
    labels = MASKED_LABELS[fn]
    where = np.array([True, False, True])
    kwargs = {"where": where, "reduction": "mean", "label_smoothing": 0.1}
    f = lambda z: getattr(jwxent, fn)(z, labels, **kwargs)
    loss, grad = jax.jit(jax.value_and_grad(f))(logits)
    assert np.isfinite(loss)
    np.testing.assert_array_equal(grad[1], 0.0)
    kept = np.array([0, 2])
    expected = getattr(ref, fn)(
        np.asarray(logits)[kept], labels[kept], reduction="mean", label_smoothing=0.1
    )
    assert_close(loss, expected, np.float32)


# ---------------------------------------------------------------------------
# Transformations.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


def test_negative_gamma_raises():
    for fn, labels in (
        (jwxent.softmax_focal_loss, jnp.zeros((2, 3))),
        (jwxent.softmax_focal_loss_with_integer_labels, jnp.zeros(2, jnp.int32)),
    ):
        with pytest.raises(ValueError, match=r"`gamma` must be >= 0; got -0.5"):
            fn(jnp.zeros((2, 3)), labels, gamma=-0.5)


def test_float_labels_to_integer_loss_raise_type_error():
    with pytest.raises(TypeError, match="`labels` must be an integer array"):
        jwxent.softmax_focal_loss_with_integer_labels(jnp.zeros((2, 3)), jnp.zeros(2))


def test_integer_logits_raise_type_error():
    with pytest.raises(TypeError, match="`logits` must be a floating-point array"):
        jwxent.softmax_focal_loss(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3)))


def test_shape_errors_raise():
    with pytest.raises(ValueError, match=r"`labels` must have shape \(2,\)"):
        jwxent.softmax_focal_loss_with_integer_labels(jnp.zeros((2, 3)), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match=r"`labels` of shape \(2, 4\) does not broadcast"):
        jwxent.softmax_focal_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"`class_weights` must have shape \(3,\)"):
        jwxent.softmax_focal_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), class_weights=jnp.ones(4))
    with pytest.raises(ValueError, match=r"`weights` of shape \(3,\) does not broadcast"):
        jwxent.softmax_focal_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), weights=jnp.ones(3))


def test_label_smoothing_with_logits_shaped_where_raises():
    with pytest.raises(
        ValueError, match="`label_smoothing` with integer labels cannot be combined"
    ):
        jwxent.softmax_focal_loss_with_integer_labels(
            jnp.zeros((2, 3)),
            jnp.zeros(2, jnp.int32),
            where=jnp.ones((2, 3), bool),
            label_smoothing=0.1,
        )
