"""Sigmoid family: values against float64 NumPy and optax, gradients against an autodiff twin."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jwxent
from tests import _references as ref
from tests._registry import REDUCTIONS
from tests._tolerance import assert_close

SHAPES = [(7,), (4, 5), (2, 3, 9), (6, 1)]


def make_inputs(shape, seed=0, dtype=np.float32):
    """Random logits, soft and hard labels, per-label pos_weight, weights and a mask."""
    rng = np.random.default_rng(seed)
    return {
        "logits": (3 * rng.standard_normal(shape)).astype(dtype),
        "labels": (rng.random(shape) < 0.4).astype(dtype),
        "soft_labels": rng.random(shape).astype(dtype),
        "pos_weight": rng.uniform(0.5, 4.0, size=shape[-1:]).astype(dtype),
        "weights": rng.uniform(0.0, 2.0, size=shape).astype(dtype),
        "where": rng.random(shape) < 0.7,
    }


# Each case maps the inputs to (labels key, keyword arguments).
BCE_CASES = {
    "plain": lambda d: ("labels", {}),
    "soft": lambda d: ("soft_labels", {}),
    "pos_weight": lambda d: ("labels", {"pos_weight": d["pos_weight"]}),
    "weights": lambda d: ("soft_labels", {"weights": d["weights"]}),
    "where": lambda d: ("labels", {"where": d["where"]}),
    "label_smoothing": lambda d: ("labels", {"label_smoothing": 0.2}),
    "everything": lambda d: (
        "soft_labels",
        {
            "pos_weight": d["pos_weight"],
            "weights": d["weights"],
            "where": d["where"],
            "label_smoothing": 0.1,
        },
    ),
}

FOCAL_CASES = {
    "plain": lambda d: ("labels", {}),
    "soft": lambda d: ("soft_labels", {"gamma": 1.5}),
    "alpha": lambda d: ("labels", {"alpha": 0.25}),
    "gamma_0": lambda d: ("labels", {"gamma": 0.0, "alpha": 0.7}),
    "gamma_half": lambda d: ("soft_labels", {"gamma": 0.5}),
    "everything": lambda d: (
        "soft_labels",
        {"alpha": 0.3, "gamma": 3.0, "weights": d["weights"], "where": d["where"]},
    ),
}


def jit_call(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` under `jax.jit` (compiling once is far cheaper than op-by-op
    dispatch on new shapes); array keywords are traced, the others static."""
    arrays = {k: v for k, v in kwargs.items() if isinstance(v, np.ndarray | jax.Array)}
    static = {k: v for k, v in kwargs.items() if k not in arrays}
    return jax.jit(lambda *a, **kw: fn(*a, **kw, **static))(*args, **arrays)


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


# ---------------------------------------------------------------------------
# Plain-JAX autodiff twins (no custom VJP).
# ---------------------------------------------------------------------------


def _twin_reduce(values, reduction, weights, where):
    """Masked, weighted `values` reduced as `docs/semantics.md` says, `weights` being the
    effective weight."""
    mask = jnp.ones(values.shape, bool) if where is None else jnp.asarray(where)
    weight = jnp.ones(values.shape, values.dtype) if weights is None else weights
    return ref._jax_reduce(weight * values, reduction, mask, weight)


def bce_twin(logits, labels, *, pos_weight=None, label_smoothing=0.0, **reducing):
    y = labels * (1.0 - label_smoothing) + 0.5 * label_smoothing
    c = 1.0 if pos_weight is None else jnp.broadcast_to(pos_weight, logits.shape)
    loss = -(c * y * jax.nn.log_sigmoid(logits) + (1.0 - y) * jax.nn.log_sigmoid(-logits))
    return _twin_reduce(loss, reducing.get("reduction", "none"), *_extras(reducing))


def focal_twin(logits, labels, *, alpha=None, gamma=2.0, **reducing):
    s = jax.nn.sigmoid(logits)
    ce = -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))
    loss = ((1.0 - labels) * s + labels * (1.0 - s)) ** gamma * ce
    if alpha is not None:
        loss = (alpha * labels + (1.0 - alpha) * (1.0 - labels)) * loss
    return _twin_reduce(loss, reducing.get("reduction", "none"), *_extras(reducing))


def _extras(reducing):
    return reducing.get("weights"), reducing.get("where")


# ---------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------


def _assert_matches_reference(fn, reference, cases, case, shape):
    """All reductions of one case, computed in one jitted call, against the reference."""
    data = make_inputs(shape, seed=len(shape) + len(case))
    labels_key, kwargs = cases[case](data)
    args = (data["logits"], data[labels_key])
    reductions = reductions_of(case)
    actual = jit_call(
        lambda *a, **k: {r: fn(*a, **k, reduction=r) for r in reductions}, *args, **kwargs
    )
    for reduction in reductions:
        expected = reference(*args, **kwargs, reduction=reduction)
        assert actual[reduction].shape == np.shape(expected)
        assert actual[reduction].dtype == jnp.float32
        assert_close(
            actual[reduction], expected, np.float32, int(np.prod(shape)), err_msg=reduction
        )


@pytest.mark.parametrize(("shape", "case"), shapes_and_cases(BCE_CASES), ids=str)
def test_bce_matches_reference(shape, case):
    _assert_matches_reference(
        jwxent.sigmoid_binary_cross_entropy,
        ref.sigmoid_binary_cross_entropy,
        BCE_CASES,
        case,
        shape,
    )


@pytest.mark.parametrize(("shape", "case"), shapes_and_cases(FOCAL_CASES), ids=str)
def test_focal_matches_reference(shape, case):
    _assert_matches_reference(
        jwxent.sigmoid_focal_loss, ref.sigmoid_focal_loss, FOCAL_CASES, case, shape
    )


def test_labels_broadcast_to_the_logits_shape():
    """Labels may lack leading axes (one label row for every example); the loss has
    the logits' shape. Shapes that would enlarge it raise (`tests/test_checks.py`)."""
    data = make_inputs((3, 4))
    labels = data["soft_labels"][:1]
    actual = jit_call(jwxent.sigmoid_binary_cross_entropy, data["logits"], labels[0])
    expected = ref.sigmoid_binary_cross_entropy(data["logits"], np.repeat(labels, 3, 0))
    assert actual.shape == (3, 4)
    assert_close(actual, expected, np.float32)


def test_integer_and_boolean_labels_are_cast():
    data = make_inputs((4, 5))
    hard = data["labels"]
    expected = ref.sigmoid_binary_cross_entropy(data["logits"], hard)
    for labels in (hard.astype(np.int32), hard.astype(bool)):
        actual = jit_call(jwxent.sigmoid_binary_cross_entropy, data["logits"], labels)
        assert_close(actual, expected, np.float32)


# ---------------------------------------------------------------------------
# optax parity.
# ---------------------------------------------------------------------------


def _assert_same_values_and_gradients(ours, theirs, logits, labels, argnums=(0, 1)):
    def value_and_grad(f):
        return jax.jit(jax.value_and_grad(lambda x, y: jnp.sum(f(x, y)), argnums))(logits, labels)

    (ours_loss, ours_grads), (their_loss, their_grads) = (
        value_and_grad(ours),
        value_and_grad(theirs),
    )
    assert_close(ours_loss, their_loss, np.float32, terms=logits.size)
    for a, b in zip(ours_grads, their_grads, strict=True):
        assert_close(a, b, np.float32)


@pytest.mark.parametrize("labels_key", ["labels", "soft_labels"])
def test_bce_matches_optax_values_and_gradients(labels_key):
    data = make_inputs((5, 6), seed=3)
    logits, labels = jnp.asarray(data["logits"]), jnp.asarray(data[labels_key])
    _assert_same_values_and_gradients(
        jwxent.sigmoid_binary_cross_entropy, optax.sigmoid_binary_cross_entropy, logits, labels
    )


@pytest.mark.parametrize(
    "kwargs", [{}, {"alpha": 0.25}, {"gamma": 0.5}, {"alpha": 0.6, "gamma": 0.0}, {"gamma": 3.0}]
)
@pytest.mark.parametrize("labels_key", ["labels", "soft_labels"])
def test_focal_matches_optax_values_and_gradients(labels_key, kwargs):
    data = make_inputs((5, 6), seed=4)
    logits, labels = jnp.asarray(data["logits"]), jnp.asarray(data[labels_key])
    # optax differentiates `logsumexp(b=[1 − y, y])`, which drops the terms whose `b` is 0:
    # its labels cotangent is wrong at hard labels (the twin tests ours there), so
    # labels are compared only for soft labels.
    _assert_same_values_and_gradients(
        lambda x, y: jwxent.sigmoid_focal_loss(x, y, **kwargs),
        lambda x, y: optax.sigmoid_focal_loss(x, y, **kwargs),
        logits,
        labels,
        argnums=(0, 1) if labels_key == "soft_labels" else (0,),
    )


def test_focal_alpha_and_gamma_may_be_positional():
    data = make_inputs((3, 4))
    logits, labels = jnp.asarray(data["logits"]), jnp.asarray(data["labels"])
    positional = jax.jit(lambda x, y: jwxent.sigmoid_focal_loss(x, y, 0.25, 1.0))
    keywords = jax.jit(lambda x, y: jwxent.sigmoid_focal_loss(x, y, alpha=0.25, gamma=1.0))
    np.testing.assert_array_equal(positional(logits, labels), keywords(logits, labels))


# ---------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------


def _arguments(case, data, dtype):
    labels_key, kwargs = case(data)
    arrays = {"logits": data["logits"], "labels": data[labels_key]}
    for name in ("pos_weight", "weights"):
        if name in kwargs:
            arrays[name] = kwargs.pop(name)
    arrays = {k: jnp.asarray(v, dtype) for k, v in arrays.items()}
    if "where" in kwargs:
        kwargs["where"] = jnp.asarray(kwargs["where"])
    return arrays, kwargs


def _grads_against_twin(fn, twin, case_name, cases):
    """Gradients of every floating argument, jwxent (float32) vs twin (float64), for each
    reduction of the case, all in one jitted call."""
    data = make_inputs((4, 5), seed=7)
    reductions = reductions_of(case_name)

    def grads(f, arrays, kwargs):
        return {
            r: jax.grad(lambda a, r=r: jnp.sum(f(**a, **kwargs, reduction=r)))(arrays)
            for r in reductions
        }

    arrays, kwargs = _arguments(cases[case_name], data, jnp.float32)
    actual = jax.jit(lambda a: grads(fn, a, kwargs))(arrays)
    with jax.enable_x64(True):
        arrays64, kwargs64 = _arguments(cases[case_name], data, jnp.float64)
        expected = jax.jit(lambda a: grads(twin, a, kwargs64))(arrays64)
        expected = jax.tree.map(np.asarray, expected)
    for reduction in reductions:
        for name in arrays:
            assert actual[reduction][name].dtype == jnp.float32
            assert_close(
                actual[reduction][name],
                expected[reduction][name],
                np.float32,
                terms=20,
                err_msg=f"{reduction}: {name}",
            )


def test_bce_logits_gradient_is_the_closed_form():
    data = make_inputs((4, 5), seed=8)
    x, y, c = (jnp.asarray(data[k]) for k in ("logits", "soft_labels", "pos_weight"))
    grad = jax.jit(
        jax.grad(lambda x: jnp.sum(jwxent.sigmoid_binary_cross_entropy(x, y, pos_weight=c)))
    )(x)
    x64, y64, c64 = (np.asarray(v, np.float64) for v in (x, y, c))
    s = np.exp(ref.log_sigmoid(x64))
    assert_close(grad, (1.0 + (c64 - 1.0) * y64) * s - c64 * y64, np.float32)


def test_pos_weight_cotangent_sums_over_broadcast_rows():
    data = make_inputs((6, 3), seed=11)
    x, y, c = (jnp.asarray(data[k]) for k in ("logits", "labels", "pos_weight"))
    grad = jax.jit(
        jax.grad(lambda c: jnp.sum(jwxent.sigmoid_binary_cross_entropy(x, y, pos_weight=c)))
    )(c)
    assert grad.shape == (3,)
    expected = np.sum(np.asarray(y, np.float64) * -ref.log_sigmoid(x), axis=0)
    assert_close(grad, expected, np.float32, terms=6)


# ---------------------------------------------------------------------------
# Dtypes.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Worked examples.
# ---------------------------------------------------------------------------


def test_multi_label_pos_weight_from_positive_ratio():
    rng = np.random.default_rng(14)
    ratios = np.array([0.5, 0.2, 0.05, 0.1])
    labels = (rng.random((200, 4)) < ratios).astype(np.float32)
    logits = rng.standard_normal((200, 4)).astype(np.float32)
    positive_ratio = labels.mean(axis=0)
    pos_weight = (1.0 / positive_ratio).astype(np.float32)
    actual = jit_call(
        jwxent.sigmoid_binary_cross_entropy, logits, labels, pos_weight=pos_weight, reduction="mean"
    )
    # Hand-written TF formula: (1 − z)·x + l·(log(1 + e^{−|x|}) + max(−x, 0)), l = 1 + (q − 1)·z.
    x, z, q = (np.asarray(v, np.float64) for v in (logits, labels, pos_weight))
    tf_loss = (1 - z) * x + (1 + (q - 1) * z) * (np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0))
    assert_close(actual, tf_loss.mean(), np.float32, terms=800)


def test_pos_weight_of_negative_to_positive_ratio_balances_the_initial_gradient():
    rng = np.random.default_rng(15)
    labels = (rng.random((300, 3)) < np.array([0.5, 0.1, 0.02])).astype(np.float32)
    positives = labels.sum(axis=0)
    pos_weight = jnp.asarray((labels.shape[0] - positives) / positives, jnp.float32)
    grad = jax.jit(
        jax.grad(
            lambda x: jwxent.sigmoid_binary_cross_entropy(
                x, labels, pos_weight=pos_weight, reduction="sum"
            )
        )
    )(jnp.zeros(labels.shape))
    # At σ(0) = 1/2 each label's negatives pull up exactly as hard as its positives pull down.
    np.testing.assert_allclose(np.sum(grad, axis=0), 0.0, atol=1e-4)


# ---------------------------------------------------------------------------
# Numerics and masking.
# ---------------------------------------------------------------------------


def test_focal_gradient_at_saturated_logits_is_zero_for_small_gamma():
    logits = jnp.array([1e4, -1e4, 200.0])
    labels = jnp.array([1.0, 0.0, 1.0])
    grad = jax.jit(jax.grad(lambda x: jnp.sum(jwxent.sigmoid_focal_loss(x, labels, gamma=0.5))))(
        logits
    )
    np.testing.assert_array_equal(grad, np.zeros(3))


def _float64_focal_sum(x, y, gamma):
    """Plain-autodiff twin: `Σ (1 − p_t)^γ · CE`, each factor in log-sigmoid form."""
    ce = y * jax.nn.softplus(-x) + (1 - y) * jax.nn.softplus(x)
    u = y * jax.nn.sigmoid(-x) + (1 - y) * jax.nn.sigmoid(x)
    return jnp.sum(u**gamma * ce)


@pytest.mark.parametrize("gamma", [None, 0.0, 0.5, 2.0])
def test_saturated_logits_keep_the_relative_precision_of_derivatives(gamma):
    """Where σ(x) rounds to the label, the gradient (≈ −e^(−|x|)) and the
    Hessian stay within float32 rounding of float64 instead of rounding to 0
    or overflowing (optax's focal test asks for finite Hessians at γ = 0.5)."""
    # |x| ≤ 30: beyond, the float64 twin's own second derivative loses digits.
    x = np.array([30.0, -30.0, 18.0, 25.0, -20.0, 3.0], np.float32)
    y = np.array([1.0, 0.0, 1.0, 0.8, 0.0, 0.9], np.float32)

    def ours(x):
        if gamma is None:  # the binary cross-entropy
            return jnp.sum(jwxent.sigmoid_binary_cross_entropy(x, y))
        return jnp.sum(jwxent.sigmoid_focal_loss(x, y, alpha=None, gamma=gamma))

    grad, hessian = jax.jit(lambda x: (jax.grad(ours)(x), jax.hessian(ours)(x)))(x)
    with jax.enable_x64(True):
        x64, y64 = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
        power = 0.0 if gamma is None else gamma
        expected_grad = jax.grad(_float64_focal_sum)(x64, y64, power)
        expected_hessian = jax.hessian(_float64_focal_sum)(x64, y64, power)
    subnormal = np.finfo(np.float32).tiny  # XLA flushes subnormal results to 0
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=subnormal)
    np.testing.assert_allclose(
        np.diag(hessian), np.diag(expected_hessian), rtol=1e-4, atol=subnormal
    )


@pytest.mark.parametrize("fn", ["sigmoid_binary_cross_entropy", "sigmoid_focal_loss"])
def test_masked_elements_have_exactly_zero_gradient_even_with_nan(fn):
    logits = jnp.array([[0.3, jnp.nan], [jnp.inf, -2.0]])
    labels = jnp.array([[1.0, jnp.nan], [1.0, 0.0]])
    where = jnp.array([[True, False], [False, True]])
    f = lambda x, y: getattr(jwxent, fn)(x, y, where=where, reduction="mean")
    loss, (gx, gy) = jax.jit(jax.value_and_grad(f, (0, 1)))(logits, labels)
    assert np.isfinite(loss)
    np.testing.assert_array_equal(np.asarray(gx)[~np.asarray(where)], 0.0)
    np.testing.assert_array_equal(np.asarray(gy)[~np.asarray(where)], 0.0)
    expected = getattr(ref, fn)(np.array([0.3, -2.0]), np.array([1.0, 0.0]), reduction="mean")
    assert_close(loss, expected, np.float32)


# ---------------------------------------------------------------------------
# Transformations.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"`labels` of shape \(3, 4\) does not broadcast"):
        jwxent.sigmoid_binary_cross_entropy(jnp.zeros((3, 5)), jnp.zeros((3, 4)))


def test_pos_weight_that_does_not_broadcast_raises():
    with pytest.raises(ValueError, match=r"`pos_weight` of shape \(3,\) does not broadcast"):
        jwxent.sigmoid_binary_cross_entropy(
            jnp.zeros((4, 5)), jnp.zeros((4, 5)), pos_weight=jnp.ones(3)
        )


def test_weights_may_not_enlarge_the_loss():
    with pytest.raises(ValueError, match=r"`weights` of shape \(4,\) does not broadcast"):
        jwxent.sigmoid_binary_cross_entropy(
            jnp.zeros((4, 1)), jnp.zeros((4, 1)), weights=jnp.ones(4)
        )


def test_integer_logits_raise_type_error():
    with pytest.raises(TypeError, match="`logits` must be a floating-point array, got dtype int32"):
        jwxent.sigmoid_focal_loss(jnp.zeros(3, jnp.int32), jnp.zeros(3))


def test_integer_pos_weight_raises_type_error():
    with pytest.raises(TypeError, match="`pos_weight` must be a floating-point array"):
        jwxent.sigmoid_binary_cross_entropy(jnp.zeros(3), jnp.zeros(3), pos_weight=jnp.ones(3, int))


def test_negative_gamma_raises():
    with pytest.raises(ValueError, match=r"`gamma` must be >= 0; got -1.0"):
        jwxent.sigmoid_focal_loss(jnp.zeros(3), jnp.zeros(3), gamma=-1.0)


def test_bad_options_raise():
    with pytest.raises(ValueError, match=r"`label_smoothing` must be in \[0, 1\)"):
        jwxent.sigmoid_binary_cross_entropy(jnp.zeros(3), jnp.zeros(3), label_smoothing=1.0)
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        jwxent.sigmoid_focal_loss(jnp.zeros(3), jnp.zeros(3), reduction="avg")  # type: ignore[arg-type]
