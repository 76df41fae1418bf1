"""Class-weight tools: counts, weights from counts, cost matrices, online estimator.

Values against the float64 NumPy formulas in `_references.py` and scikit-learn;
hypothesis properties of every method and normalisation; transforms.
"""

import functools
import pathlib
import re

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax.test_util import check_grads
from sklearn.utils.class_weight import compute_class_weight

import jwxent
from tests import _references as ref
from tests._tolerance import assert_close

METHODS = ["inverse", "inverse_sqrt", "balanced", "effective_number", "median_frequency"]
NORMALIZATIONS = [None, "sum_to_one", "sum_to_num_classes", "mean_one"]
IGNORE = -100
# Two absent classes, ties, a count of 1, large counts, an odd number present.
COUNTS = np.array([3.0, 0.0, 12.0, 1.0, 400.0, 12.0, 0.0, 2500.0, 7.0], np.float32)
PROPERTY_SETTINGS = settings(max_examples=25, derandomize=True, deadline=None)


def random_labels(shape, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    batch = shape[:-1] if len(shape) > 1 else shape
    return {
        "labels": rng.integers(0, num_classes, size=shape).astype(np.int32),
        "probs": rng.dirichlet(np.ones(num_classes), size=batch).astype(np.float32),
        "weights": rng.uniform(0.0, 2.0, size=batch).astype(np.float32),
        "where": rng.random(batch) < 0.7,
        "ignored": rng.random(shape) < 0.3,
    }


# ---------------------------------------------------------------------------
# class_counts
# ---------------------------------------------------------------------------

COUNT_CASES = {
    "plain": lambda d: {},
    "where": lambda d: {"where": d["where"]},
    "weights": lambda d: {"weights": d["weights"]},
    "where_and_weights": lambda d: {"where": d["where"], "weights": d["weights"]},
}


@pytest.mark.parametrize("case", COUNT_CASES)
@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 3, 4)])
def test_class_counts_integer_labels(shape, case):
    num_classes = 5
    d = random_labels(shape, num_classes)
    d["weights"] = np.random.default_rng(1).uniform(0.0, 2.0, size=shape).astype(np.float32)
    d["where"] = np.random.default_rng(2).random(shape) < 0.7
    kwargs = COUNT_CASES[case](d)
    counts = jwxent.class_counts(d["labels"], num_classes, **kwargs)
    assert counts.shape == (num_classes,) and counts.dtype == jnp.float32
    expected = ref.class_counts(d["labels"], num_classes, **kwargs)
    assert_close(counts, expected, np.float32, terms=max(1, int(np.prod(shape))))


@pytest.mark.parametrize("shape", [(7,), (3, 5)])
def test_class_counts_ignore_index(shape):
    d = random_labels(shape, 4)
    labels = np.where(d["ignored"], IGNORE, d["labels"]).astype(np.int32)
    counts = jwxent.class_counts(labels, 4, ignore_index=IGNORE)
    assert_close(counts, ref.class_counts(labels, 4, ignore_index=IGNORE), np.float32)
    # Independently of the reference: the ignored entries are exactly the missing ones.
    np.testing.assert_array_equal(counts, np.bincount(d["labels"][~d["ignored"]], minlength=4))


@pytest.mark.parametrize("case", COUNT_CASES)
@pytest.mark.parametrize("shape", [(3,), (6, 3), (2, 4, 3)])
def test_class_counts_probability_labels(shape, case):
    d = random_labels(shape, shape[-1])
    kwargs = COUNT_CASES[case](d)
    counts = jwxent.class_counts(d["probs"], shape[-1], **kwargs)
    expected = ref.class_counts(d["probs"], shape[-1], **kwargs)
    assert_close(counts, expected, np.float32, terms=int(np.prod(shape)))


def test_class_counts_one_hot_equals_integer():
    d = random_labels((20,), 6)
    one_hot = np.eye(6, dtype=np.float32)[d["labels"]]
    kwargs = {"where": d["where"], "weights": d["weights"]}
    from_one_hot = jwxent.class_counts(one_hot, 6, **kwargs)
    assert_close(from_one_hot, jwxent.class_counts(d["labels"], 6, **kwargs), np.float32, terms=20)
    assert_close(from_one_hot, ref.class_counts(d["labels"], 6, **kwargs), np.float32, terms=20)


def test_class_counts_masked_nan_probabilities_do_not_leak():
    probs = np.array([[0.5, 0.5], [np.nan, np.nan]], np.float32)
    counts = jwxent.class_counts(probs, 2, where=np.array([True, False]))
    np.testing.assert_array_equal(counts, [0.5, 0.5])


def test_class_counts_out_of_range_labels():
    labels = jnp.array([0, 3, 1, -1])
    with pytest.raises(ValueError, match=r"`labels` must be in \[0, 3\).*got 3 at index \(1,\)"):
        jwxent.class_counts(labels, 3)
    # Masked out-of-range labels are fine; under jit they are not counted.
    masked = jwxent.class_counts(labels, 3, where=jnp.array([True, False, True, False]))
    np.testing.assert_array_equal(masked, [1.0, 1.0, 0.0])
    jitted = jax.jit(jwxent.class_counts, static_argnums=1)(labels, 3)
    np.testing.assert_array_equal(jitted, [1.0, 1.0, 0.0])


def test_class_counts_with_labels_sharded_in_types():
    """`Explicit` mesh axes: batch-sharded labels count into replicated counts.

    The scatter-add of sharded indices names its output sharding, and the
    mask and weights are laid out like the labels. One device suffices: the
    sharding is in the types. Many processes: `tests/test_multiprocess.py`.
    """
    d = random_labels((2, 6), 5)
    labels = np.where(d["ignored"], IGNORE, d["labels"])
    weights, where = np.tile(d["weights"][:, None], 6), np.tile(d["where"][:, None], 6)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    sharded = lambda a, *spec: jax.device_put(a, jax.NamedSharding(mesh, jax.P(*spec)))
    kwargs = {"weights": weights, "where": where, "ignore_index": IGNORE}

    def counts(labels, probs):
        state = jwxent.class_balance_update(jwxent.class_balance_init(5), labels, **kwargs)
        hard = jwxent.class_counts(labels, 5, **kwargs)
        return hard, jwxent.class_counts(probs, 5, where=d["where"]), state.ema

    with jax.set_mesh(mesh):
        got = jax.jit(counts)(sharded(labels, "data"), sharded(d["probs"], "data"))
    expected = counts(labels, d["probs"])
    for a, b in zip(got, expected, strict=True):
        assert a.sharding.spec == jax.P(None)
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_class_counts_axis_name_sums_over_shard_map():
    labels = np.array([0, 2, 2, 1, 2, 0, 0, 1], np.int32)
    mesh = jax.make_mesh((1,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))

    def body(y):
        state = jwxent.class_balance_update(jwxent.class_balance_init(3), y, axis_name="batch")
        return jwxent.class_counts(y, 3, axis_name="batch"), state.ema

    mapped = jax.shard_map(body, mesh=mesh, in_specs=jax.P("batch"), out_specs=jax.P())
    counts, ema = jax.jit(mapped)(labels)
    np.testing.assert_array_equal(counts, [3.0, 2.0, 3.0])
    np.testing.assert_allclose(ema, 0.01 * counts / 8, rtol=1e-6)


def test_class_counts_gradient_with_respect_to_weights():
    labels = np.array([2, 0, 2, 1, 0], np.int32)
    weights = jnp.array([0.5, 1.0, 2.0, 1.5, 0.25])
    jacobian = jax.jacrev(lambda w: jwxent.class_counts(labels, 3, weights=w))(weights)
    np.testing.assert_array_equal(jacobian, np.eye(3)[labels].T)


def test_class_counts_jit_vmap_and_no_retrace():
    d = random_labels((4, 10), 5)
    labels, weights = d["labels"], d["weights"]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def counts_fn(labels, weights):
        return jwxent.class_counts(labels, 5, weights=weights)

    chex.clear_trace_counter()
    for row in range(4):
        expected = ref.class_counts(labels[row], 5, weights=weights[row])
        assert_close(counts_fn(labels[row], weights[row]), expected, np.float32, terms=10)
    weights_2d = np.random.default_rng(3).uniform(size=(4, 10)).astype(np.float32)
    batched = jax.vmap(lambda y, w: jwxent.class_counts(y, 5, weights=w))(labels, weights_2d)
    looped = [ref.class_counts(labels[i], 5, weights=weights_2d[i]) for i in range(4)]
    assert_close(batched, np.stack(looped), np.float32, terms=10)


def test_class_counts_float64():
    with jax.enable_x64(True):
        probs = np.random.default_rng(0).dirichlet(np.ones(3), size=5)
        counts = jwxent.class_counts(jnp.asarray(probs, jnp.float64), 3)
        assert counts.dtype == jnp.float64
        assert_close(counts, probs.sum(axis=0), np.float64, terms=5)
        weights = jnp.full(5, 2.0, jnp.float64)
        integer = jwxent.class_counts(jnp.array([0, 1, 1, 2, 1]), 3, weights=weights)
        assert integer.dtype == jnp.float64
        np.testing.assert_array_equal(integer, [2.0, 6.0, 2.0])
        mixed = jwxent.class_counts(jnp.asarray(probs, jnp.float32), 3, weights=weights)
        assert mixed.dtype == jnp.float64
        assert_close(mixed, 2.0 * probs.sum(axis=0), np.float32, terms=5)


# ---------------------------------------------------------------------------
# class_weights_from_counts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("method", METHODS)
def test_weights_match_float64_formulas(method, normalize):
    # An even number of present classes (median between two) and soft counts.
    soft_counts = np.array([5.0, 0.0, 2.25, 9.0, 0.5], np.float32)
    for counts in (COUNTS, soft_counts):
        for beta in (0.999, 0.9, 0.0):
            weights = jwxent.class_weights_from_counts(
                counts, method=method, normalize=normalize, beta=beta
            )
            expected = ref.class_weights_from_counts(counts, method, normalize, beta)
            assert weights.dtype == jnp.float32
            assert_close(weights, expected, np.float32, terms=counts.size)


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("method", METHODS)
def test_single_class_and_no_class(method, normalize):
    one = jwxent.class_weights_from_counts(jnp.array([5.0]), method=method, normalize=normalize)
    assert_close(one, ref.class_weights_from_counts([5.0], method, normalize), np.float32)
    none = jwxent.class_weights_from_counts(jnp.zeros(4), method=method, normalize=normalize)
    np.testing.assert_array_equal(none, np.zeros(4))


def test_integer_counts_give_the_weights_of_float_counts():
    """`np.bincount`'s int64 counts (int32 once JAX has them without x64), uint8, x64's int64."""
    labels = np.repeat(np.arange(COUNTS.size), COUNTS.astype(np.int64))
    bincount = np.bincount(labels, minlength=COUNTS.size)
    assert bincount.dtype == np.int64
    np.testing.assert_array_equal(bincount, COUNTS)
    for method in METHODS:
        for normalize in NORMALIZATIONS:
            options = {"method": method, "normalize": normalize, "beta": 0.99}
            weights = jwxent.class_weights_from_counts(bincount, **options)
            assert weights.dtype == jnp.float32, (method, normalize)
            expected = ref.class_weights_from_counts(COUNTS, method, normalize, 0.99)
            assert_close(weights, expected, np.float32, terms=COUNTS.size)
            # Converted to float32 first: the very bits of float32 counts.
            np.testing.assert_array_equal(
                weights, jwxent.class_weights_from_counts(COUNTS, **options)
            )
    small = np.bincount(labels[labels < 4], minlength=4).astype(np.uint8)
    weights = jwxent.class_weights_from_counts(small, normalize="mean_one")
    assert weights.dtype == jnp.float32
    assert_close(weights, ref.class_weights_from_counts(small, "inverse", "mean_one"), np.float32)
    with jax.enable_x64(True):  # int64 stays int64 for JAX, and is still computed in float32
        weights = jwxent.class_weights_from_counts(bincount, method="balanced")
        assert weights.dtype == jnp.float32
        expected = ref.class_weights_from_counts(COUNTS, "balanced")
        assert_close(weights, expected, np.float32, terms=COUNTS.size)


@pytest.mark.parametrize(
    "counts", [np.array([True, False]), np.bincount([0, 0, 2]) > 0, jnp.ones(3, bool)]
)
def test_bool_counts_are_a_type_error(counts):
    with pytest.raises(TypeError, match="`counts` must be an integer or floating-point array"):
        jwxent.class_weights_from_counts(counts)


@pytest.mark.parametrize("with_sample_weight", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_matches_scikit_learn(seed, with_sample_weight):
    rng = np.random.default_rng(seed)
    num_classes = 6
    # A long-tailed label distribution in which every class occurs.
    probs = 0.5 ** np.arange(num_classes)
    labels = np.concatenate(
        [np.arange(num_classes), rng.choice(num_classes, size=200, p=probs / probs.sum())]
    )
    sample_weight = rng.uniform(0.5, 2.0, size=labels.size) if with_sample_weight else None
    expected = compute_class_weight(
        "balanced", classes=np.arange(num_classes), y=labels, sample_weight=sample_weight
    )
    weights = None if sample_weight is None else sample_weight.astype(np.float32)
    counts = jwxent.class_counts(labels.astype(np.int32), num_classes, weights=weights)
    actual = jwxent.class_weights_from_counts(counts, method="balanced")
    assert_close(actual, expected, np.float32, terms=labels.size)


def test_balanced_with_absent_classes_matches_scikit_learn():
    """scikit-learn's n_classes is the number of classes present in `y`."""
    labels = np.array([0, 0, 0, 2, 2, 5, 0, 2], np.int32)
    present = np.unique(labels)
    expected = compute_class_weight("balanced", classes=present, y=labels)
    actual = jwxent.class_weights_from_counts(jwxent.class_counts(labels, 7), method="balanced")
    assert_close(actual[present], expected, np.float32)
    np.testing.assert_array_equal(np.delete(np.asarray(actual), present), 0.0)


def test_balanced_is_inverse_normalised_to_mean_one():
    balanced = jwxent.class_weights_from_counts(COUNTS, method="balanced")
    inverse = jwxent.class_weights_from_counts(COUNTS, normalize="mean_one")
    assert_close(balanced, inverse, np.float32, terms=COUNTS.size)
    # N / (C₊ n_c) in float64, written out here rather than taken from the reference.
    n = COUNTS.astype(np.float64)
    present = n > 0
    expected = np.where(present, n.sum() / (present.sum() * np.where(present, n, 1.0)), 0.0)
    assert_close(inverse, expected, np.float32, terms=COUNTS.size)


def test_effective_number_limits():
    counts = jnp.array([1.0, 2.0, 50.0, 0.0])
    # One example has effective number 1; β = 0 counts every present class once.
    effective = jwxent.class_weights_from_counts(counts, method="effective_number", beta=0.99)
    assert_close(effective[0], 1.0, np.float32)
    at_zero = jwxent.class_weights_from_counts(counts, method="effective_number", beta=0.0)
    np.testing.assert_array_equal(at_zero, [1.0, 1.0, 1.0, 0.0])
    # β → 1: the effective number tends to n, so the weights tend to inverse frequency.
    near_one = jwxent.class_weights_from_counts(counts, method="effective_number", beta=1 - 1e-6)
    np.testing.assert_allclose(near_one, [1.0, 1 / 2, 1 / 50, 0.0], rtol=1e-3)


def every_normalisation(counts, method, beta=0.999):
    """`[4, C]`: the weights of `method` under each normalisation, stacked."""
    return jnp.stack(
        [
            jwxent.class_weights_from_counts(counts, method=method, normalize=n, beta=beta)
            for n in NORMALIZATIONS
        ]
    )


@pytest.mark.parametrize("method", METHODS)
def test_zero_counts_have_finite_gradients(method):
    jacobian_fn = jax.jacrev(functools.partial(every_normalisation, method=method))
    for counts in (jnp.asarray(COUNTS), jnp.zeros(3), jnp.array([0.0, 4.0, 0.0])):
        jacobian = np.asarray(jacobian_fn(counts))  # [normalisation, weight, count]
        assert np.all(np.isfinite(jacobian)), (counts, jacobian)
        absent = np.flatnonzero(np.asarray(counts) == 0)
        # An absent class's weight stays 0 as its count moves: zero derivative.
        np.testing.assert_array_equal(jacobian[:, absent, absent], 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_match_finite_differences(method):
    counts = np.array([3.0, 0.0, 12.0, 1.0, 40.0, 7.0])
    present = counts > 0
    with jax.enable_x64(True):
        # Finite differences only in the present classes (the weight jumps at 0).
        def weights_of_present(p):
            full = jnp.zeros(counts.size, jnp.float64).at[present].set(p)
            return every_normalisation(full, method, beta=0.9)

        check_grads(
            weights_of_present,
            (jnp.asarray(counts[present], jnp.float64),),
            order=1,
            modes=["rev"],
        )


def test_weights_jit_vmap_and_float64():
    counts = np.random.default_rng(0).integers(0, 20, size=(5, 7)).astype(np.float32)
    fn = lambda c: jwxent.class_weights_from_counts(
        c, method="median_frequency", normalize="sum_to_one"
    )
    batched = jax.vmap(fn)(counts)
    looped = [
        ref.class_weights_from_counts(row, "median_frequency", "sum_to_one") for row in counts
    ]
    assert_close(batched, np.stack(looped), np.float32, terms=7)
    assert_close(jax.jit(fn)(counts[0]), looped[0], np.float32, terms=7)
    with jax.enable_x64(True):
        weights = jwxent.class_weights_from_counts(
            jnp.asarray(COUNTS, jnp.float64), method="effective_number"
        )
        assert weights.dtype == jnp.float64
        assert_close(weights, ref.class_weights_from_counts(COUNTS, "effective_number"), np.float64)


# Hypothesis: counts that are 0 or between 0.5 and 10⁴ (soft or integer).
count_lists = st.lists(
    st.one_of(st.just(0.0), st.floats(0.5, 1e4, allow_nan=False, width=32)),
    min_size=1,
    max_size=6,
)


@jax.jit
def every_weighting(counts):
    """`{"method/normalize": weights}` for every method and normalisation, β = 0.99."""
    return {
        f"{method}/{normalize}": jwxent.class_weights_from_counts(
            counts, method=method, normalize=normalize, beta=0.99
        )
        for method in METHODS
        for normalize in NORMALIZATIONS
    }


@PROPERTY_SETTINGS
@given(counts=count_lists)
def test_property_normalisation_holds(counts):
    counts = np.asarray(counts, np.float32)
    present = counts > 0
    n = counts.astype(np.float64)
    weights = {key: np.asarray(w, np.float64) for key, w in every_weighting(counts).items()}
    for method in METHODS:
        if not present.any():
            break
        sums = {norm: weights[f"{method}/{norm}"].sum() for norm in NORMALIZATIONS}
        example_mean = (n * weights[f"{method}/mean_one"]).sum() / n.sum()
        assert_close(sums["sum_to_one"], 1.0, np.float32, terms=counts.size)
        assert_close(sums["sum_to_num_classes"], present.sum(), np.float32, terms=counts.size)
        assert_close(example_mean, 1.0, np.float32, terms=counts.size)


@PROPERTY_SETTINGS
@given(counts=count_lists)
def test_property_monotone_zero_and_invariant_to_absent_classes(counts):
    counts = np.asarray(counts, np.float32)
    present = counts > 0
    order = np.argsort(counts[present], kind="stable")
    weights = every_weighting(counts)
    appended = every_weighting(np.append(counts, np.float32(0)))
    for key, w in weights.items():
        w = np.asarray(w)
        assert np.all(np.isfinite(w)) and np.all(w >= 0), key
        np.testing.assert_array_equal(w[~present], 0.0)
        # Non-increasing in the count (a few ulps of rounding allowed).
        by_count = w[present][order]
        assert np.all(np.diff(by_count) <= 1e-6 * by_count[:-1]), (key, w)
        # Appending an absent class leaves every other weight unchanged.
        assert_close(appended[key][:-1], w, np.float32, terms=counts.size, err_msg=key)
        assert float(appended[key][-1]) == 0.0


# ---------------------------------------------------------------------------
# cost_matrix_from_class_weights
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["label", "prediction"])
def test_cost_matrix_values(by):
    class_weights = np.array([0.5, 2.0, 1.0, 3.0], np.float32)
    matrix = jwxent.cost_matrix_from_class_weights(class_weights, by=by)
    np.testing.assert_array_equal(matrix, ref.cost_matrix_from_class_weights(class_weights, by))


@pytest.mark.parametrize("reduction", ["none", "sum", "weighted_mean"])
def test_cost_matrix_by_label_equals_class_weights(reduction):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((12, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=12).astype(np.int32)
    class_weights = rng.uniform(0.2, 3.0, size=5).astype(np.float32)
    matrix = jwxent.cost_matrix_from_class_weights(class_weights, by="label")

    @jax.jit
    def loss_and_grad(z, weighting):
        loss = lambda z: jwxent.softmax_cross_entropy_with_integer_labels(
            z, labels, reduction=reduction, **weighting
        )
        return loss(z), jax.grad(lambda z: jnp.sum(loss(z)))(z)

    with_matrix, grad_with_matrix = loss_and_grad(logits, {"cost_matrix": matrix})
    with_weights, grad_with_weights = loss_and_grad(logits, {"class_weights": class_weights})
    assert_close(with_matrix, with_weights, np.float32, terms=12)
    assert_close(grad_with_matrix, grad_with_weights, np.float32)
    expected = ref.softmax_cross_entropy_with_integer_labels(
        logits, labels, class_weights=class_weights, reduction=reduction
    )
    assert_close(with_matrix, expected, np.float32, terms=12)


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_cost_matrix_by_prediction_weights_by_predicted_class(reduction):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, 4, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=(3, 4)).astype(np.int32)
    class_weights = rng.uniform(0.2, 3.0, size=5).astype(np.float32)
    matrix = jwxent.cost_matrix_from_class_weights(class_weights, by="prediction")
    actual = jwxent.softmax_cross_entropy_with_integer_labels(
        logits, labels, cost_matrix=matrix, reduction=reduction
    )
    predicted_weight = class_weights[np.argmax(logits, axis=-1)]
    expected = ref.softmax_cross_entropy_with_integer_labels(
        logits, labels, weights=predicted_weight, reduction=reduction
    )
    assert_close(actual, expected, np.float32, terms=12)


def test_cost_matrix_gradient_with_respect_to_class_weights():
    class_weights = jnp.array([0.5, 2.0, 1.0])
    row_sums = lambda c, by: jnp.sum(jwxent.cost_matrix_from_class_weights(c, by=by), axis=1)
    # Rows of the label matrix are 3·c_y; every row of the prediction matrix is Σ_k c_k.
    by_label = jax.jacrev(row_sums)(class_weights, "label")
    np.testing.assert_array_equal(by_label, 3.0 * np.eye(3))
    by_prediction = jax.jacrev(row_sums)(class_weights, "prediction")
    np.testing.assert_array_equal(by_prediction, np.ones((3, 3)))


# ---------------------------------------------------------------------------
# The online class-balance estimator
# ---------------------------------------------------------------------------


def batch_frequencies(labels, num_classes):
    counts = np.bincount(np.ravel(labels), minlength=num_classes).astype(np.float64)
    return counts / counts.sum()


def test_init_is_uniform():
    state = jwxent.class_balance_init(4)
    assert state.ema.shape == (4,) and state.ema.dtype == jnp.float32
    assert state.num_updates.dtype == jnp.int32 and int(state.num_updates) == 0
    np.testing.assert_array_equal(jwxent.class_balance_frequencies(state), np.full(4, 0.25))
    np.testing.assert_array_equal(jwxent.class_balance_weights(state), np.ones(4))


def test_bias_correction_makes_the_first_step_exact():
    labels = np.array([0, 0, 0, 1, 3, 3, 0, 3], np.int32)
    state = jwxent.class_balance_update(jwxent.class_balance_init(4), labels, decay=0.9)
    expected = batch_frequencies(labels, 4)
    assert_close(jwxent.class_balance_frequencies(state), expected, np.float32)
    # Without the correction the EMA is (1 − decay) times too small.
    assert_close(state.ema, 0.1 * expected, np.float32)
    assert int(state.num_updates) == 1


def test_matches_closed_form_with_varying_decay_and_empty_batches():
    rng = np.random.default_rng(0)
    num_classes = 5
    state = jwxent.class_balance_init(num_classes)
    frequencies, decays = [], []
    for step in range(12):
        labels = rng.integers(0, num_classes, size=(2, 8)).astype(np.int32)
        decay = float(rng.choice([0.5, 0.9, 0.99]))
        where = np.zeros((2, 8), bool) if step == 4 else rng.random((2, 8)) < 0.8
        state = jwxent.class_balance_update(state, labels, decay=decay, where=where)
        if where.any():  # an empty batch leaves the state unchanged
            frequencies.append(batch_frequencies(labels[where], num_classes))
            decays.append(decay)
    assert int(state.num_updates) == len(decays) == 11
    expected = ref.class_balance_frequencies(frequencies, decays)
    assert_close(jwxent.class_balance_frequencies(state), expected, np.float32, terms=12)


def test_converges_to_true_frequencies_in_scan():
    true = np.array([0.6, 0.25, 0.1, 0.04, 0.01])
    num_batches, batch_size, decay = 600, 64, 0.99
    keys = jax.random.split(jax.random.key(0), num_batches)
    logits = jnp.log(jnp.asarray(true, jnp.float32))

    def step(state, key):
        labels = jax.random.categorical(key, logits, shape=(batch_size,))
        return jwxent.class_balance_update(state, labels, decay=decay), labels

    state, all_labels = jax.jit(lambda s: jax.lax.scan(step, s, keys))(jwxent.class_balance_init(5))
    estimate = jwxent.class_balance_frequencies(state)
    # The EMA of exactly these batches, in float64.
    per_batch = [batch_frequencies(labels, 5) for labels in np.asarray(all_labels)]
    exact = ref.class_balance_frequencies(per_batch, [decay] * num_batches)
    assert_close(estimate, exact, np.float32, terms=num_batches)
    # About 12 800 examples in the EMA's window: a standard error below 0.005.
    np.testing.assert_allclose(estimate, true, atol=0.02)
    assert_close(jnp.sum(estimate), 1.0, np.float32, terms=5)


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("method", METHODS)
def test_weights_from_state_are_weights_from_frequencies(method, normalize):
    rng = np.random.default_rng(1)
    state = jwxent.class_balance_init(6)
    for _ in range(3):
        labels = rng.integers(0, 5, size=16).astype(np.int32)  # class 5 never occurs
        state = jwxent.class_balance_update(state, labels, decay=0.8)
    frequencies = np.asarray(jwxent.class_balance_frequencies(state), np.float64)
    num_examples = 1000.0
    actual = jwxent.class_balance_weights(
        state, method=method, normalize=normalize, beta=0.99, num_examples=num_examples
    )
    expected = ref.class_weights_from_counts(frequencies * num_examples, method, normalize, 0.99)
    assert_close(actual, expected, np.float32, terms=6)
    assert float(actual[5]) == 0.0


def test_default_weights_are_balanced():
    labels = np.array([0, 0, 0, 1, 2, 2], np.int32)
    state = jwxent.class_balance_update(jwxent.class_balance_init(3), labels, decay=0.5)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert_close(jwxent.class_balance_weights(state), expected, np.float32)


def test_train_step_with_online_weights_is_jittable_and_does_not_retrace():
    rng = np.random.default_rng(2)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def train_step(params, state, x, y):
        state = jwxent.class_balance_update(state, y, decay=0.9, ignore_index=IGNORE)
        class_weights = jwxent.class_balance_weights(state)

        def loss_fn(w):
            return jwxent.softmax_cross_entropy_with_integer_labels(
                x @ w, y, class_weights=class_weights, ignore_index=IGNORE, reduction="mean"
            )

        loss, grad = jax.value_and_grad(loss_fn)(params)
        return params - 0.1 * grad, state, loss

    chex.clear_trace_counter()
    params = jnp.zeros((4, 3))
    state = jwxent.class_balance_init(3)
    losses, frequencies = [], []
    for _ in range(10):
        x = rng.standard_normal((16, 4)).astype(np.float32)
        y = np.argmax(x[:, :3] + np.array([2.0, 0.0, -1.0], np.float32), axis=1)
        y = np.where(rng.random(16) < 0.2, IGNORE, y).astype(np.int32)
        frequencies.append(batch_frequencies(y[y != IGNORE], 3))
        params, state, loss = train_step(params, state, x, y)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    # Step 1: uniform logits and weights normalised to mean one over this very
    # batch, so the weighted mean loss is exactly the unweighted log 3.
    assert_close(losses[0], np.log(3.0), np.float32, terms=16)
    expected = ref.class_balance_frequencies(frequencies, [0.9] * 10)
    assert_close(jwxent.class_balance_frequencies(state), expected, np.float32, terms=10)


# ---------------------------------------------------------------------------
# The online estimator: a class that vanishes and comes back
# ---------------------------------------------------------------------------

# Class 3 occurs, vanishes for 10 000 batches, then comes back; class 4 never occurs.
VANISHING_FREQUENCIES = np.array([0.5, 0.3, 0.15, 0.05, 0.0])
BEFORE, GONE, AFTER = 200, 10_000, 700
VANISHING_BATCH, VANISHING_DECAY = 64, 0.99
DEFAULT_MIN_FREQUENCY = 0.01 / VANISHING_FREQUENCIES.size  # the documented default


def floored_ema(batch_counts, decay, min_frequency):
    """float64 loop over the batches: the bias-corrected EMA with a floor on seen classes.

    Returns the frequencies after every batch, and which classes were seen by then.
    """
    batch_counts = np.asarray(batch_counts, np.float64)
    num_classes = batch_counts.shape[1]
    ema, correction, seen = np.zeros(num_classes), 0.0, np.zeros(num_classes, bool)
    frequencies = np.empty_like(batch_counts)
    seen_by = np.empty(batch_counts.shape, bool)
    for t, counts in enumerate(batch_counts):
        if counts.sum() > 0:
            seen |= counts > 0
            correction = decay * correction + (1.0 - decay)
            ema = decay * ema + (1.0 - decay) * counts / counts.sum()
            ema = np.where(seen, np.maximum(ema, min_frequency * correction), ema)
        frequencies[t] = ema / correction if correction > 0 else 1.0 / num_classes
        seen_by[t] = seen
    return frequencies, seen_by


@functools.cache
def vanishing_class_run():
    """One jitted `lax.scan` over the 10 900 batches; everything it saw, as NumPy arrays."""
    num_classes = VANISHING_FREQUENCIES.size
    steps = BEFORE + GONE + AFTER
    gone = np.zeros(steps, bool)
    gone[BEFORE : BEFORE + GONE] = True
    keys = jax.random.split(jax.random.key(0), steps)
    with np.errstate(divide="ignore"):
        log_p = np.log(VANISHING_FREQUENCIES).astype(np.float32)  # -inf: never drawn
    log_p_gone = np.where(np.arange(num_classes) == 3, -np.inf, log_p).astype(np.float32)
    # Logits that favour class 0, so that class 3's examples have a large loss.
    logits = np.random.default_rng(0).standard_normal((VANISHING_BATCH, num_classes))
    logits = (logits + np.array([3.0, 1.0, 0.0, -2.0, 0.0])).astype(np.float32)

    def step(state, inputs):
        key, is_gone = inputs
        labels = jax.random.categorical(
            key, jnp.where(is_gone, log_p_gone, log_p), shape=(VANISHING_BATCH,)
        )
        state = jwxent.class_balance_update(state, labels, decay=VANISHING_DECAY)
        weights = jwxent.class_balance_weights(state)
        loss = jwxent.softmax_cross_entropy_with_integer_labels(
            logits, labels, class_weights=weights, reduction="mean"
        )
        outputs = (labels, state, jwxent.class_balance_frequencies(state), weights, loss)
        return state, outputs

    run = jax.jit(lambda state: jax.lax.scan(step, state, (keys, gone))[1])
    labels, states, frequencies, weights, losses = jax.tree.map(
        np.asarray, run(jwxent.class_balance_init(num_classes))
    )
    counts = np.stack([np.bincount(row, minlength=num_classes) for row in labels])
    expected, seen = floored_ema(counts, VANISHING_DECAY, DEFAULT_MIN_FREQUENCY)
    return {
        "labels": labels,
        "logits": logits,
        "states": states,
        "frequencies": frequencies,
        "weights": weights,
        "losses": losses,
        "counts": counts,
        "expected": expected,
        "seen": seen,
    }


def test_vanishing_class_frequencies_follow_the_floored_float64_ema():
    run = vanishing_class_run()
    counts, expected = run["counts"], run["expected"]
    assert counts[BEFORE : BEFORE + GONE, 3].sum() == 0 and counts[BEFORE - 1, 3] > 0
    assert counts[:, 4].sum() == 0
    assert_close(run["frequencies"], expected, np.float32, terms=100)
    # The floor holds the vanished class for most of its absence.
    np.testing.assert_allclose(expected[BEFORE + GONE - 1, 3], DEFAULT_MIN_FREQUENCY, rtol=1e-12)
    held = expected[BEFORE : BEFORE + GONE, 3] <= DEFAULT_MIN_FREQUENCY * (1 + 1e-12)
    assert held.mean() > 0.95
    # The EMA itself never underflows for a class that was seen; one never seen stays 0.
    ema = run["states"].ema
    seen_from = np.argmax(counts[:, 3] > 0)
    assert np.all(ema[seen_from:, 3] > 0)
    correction = run["states"].bias_correction[:, None]
    np.testing.assert_allclose(
        ema[BEFORE + GONE - 1, 3], DEFAULT_MIN_FREQUENCY * correction[BEFORE + GONE - 1, 0], 1e-5
    )
    np.testing.assert_array_equal(ema[:, 4], 0.0)


def test_vanishing_class_weights_are_finite_and_capped_at_every_step():
    run = vanishing_class_run()
    weights, expected, seen = run["weights"], run["expected"], run["seen"]
    num_seen = seen.sum(axis=1)
    # The default weights, "inverse" with "mean_one", in float64: Σ f̂ / (C₊ f̂_c) if seen.
    safe = np.where(seen, expected, 1.0)
    reference = np.where(seen, expected.sum(axis=1, keepdims=True) / (num_seen[:, None] * safe), 0)
    assert np.all(np.isfinite(weights))
    assert_close(weights, reference, np.float32, terms=100)
    # The documented cap, 1 + 1 / (C₊ f_min), holds at every step (to rounding).
    cap = 1.0 + 1.0 / (num_seen * DEFAULT_MIN_FREQUENCY)
    assert np.all(weights <= cap[:, None] * (1 + 1e-5))
    # It is reached: the vanished class sits just under it while it is gone.
    gone = weights[BEFORE : BEFORE + GONE, 3]
    assert gone.max() >= 0.99 * (cap[BEFORE + GONE - 1] - 1.0)
    # Positive while gone (seen before); exactly 0 for the class never seen.
    assert np.all(gone > 0)
    np.testing.assert_array_equal(weights[:, 4], 0.0)


def test_vanishing_class_loss_is_finite_when_it_returns():
    run = vanishing_class_run()
    labels, logits, losses = run["labels"], run["logits"], run["losses"]
    assert np.all(np.isfinite(losses))
    # float64 reference: mean over the batch of w_ref[y] · (logsumexp(z) − z_y).
    z = logits.astype(np.float64)
    top = z.max(axis=1)
    nll = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    nll = nll[None, :] - z[np.arange(z.shape[0])[None, :], labels]
    expected, seen = run["expected"], run["seen"]
    safe = np.where(seen, expected, 1.0)
    num_seen = seen.sum(axis=1, keepdims=True)
    w_ref = np.where(seen, expected.sum(axis=1, keepdims=True) / (num_seen * safe), 0.0)
    reference = np.mean(np.take_along_axis(w_ref, labels, axis=1) * nll, axis=1)
    assert_close(losses, reference, np.float32, terms=100 * VANISHING_BATCH)
    back = BEFORE + GONE + np.argmax(run["counts"][BEFORE + GONE :, 3] > 0)
    assert losses[back] > 2.0 * np.median(losses[BEFORE : BEFORE + GONE])
    assert losses[back] < 1e3


def test_vanishing_class_estimate_converges_back_after_it_returns():
    run = vanishing_class_run()
    final = run["frequencies"][-1]
    # About 12 800 examples in the EMA's window: a standard error below 0.005.
    np.testing.assert_allclose(final, VANISHING_FREQUENCIES, atol=0.02)
    # The floor's extra mass has decayed: the plain EMA of the batches (no floor).
    batch_freqs = run["counts"] / run["counts"].sum(axis=1, keepdims=True)
    plain = ref.class_balance_frequencies(batch_freqs[-AFTER:], [VANISHING_DECAY] * AFTER)
    plain_weight = 1.0 - VANISHING_DECAY**AFTER  # the last AFTER batches' share of the EMA
    np.testing.assert_allclose(final, plain, atol=2.0 * (1.0 - plain_weight))


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_floor_bounds_every_method_and_normalisation(normalize):
    run = vanishing_class_run()
    last_gone = BEFORE + GONE - 1
    state = jax.tree.map(lambda x: x[last_gone], run["states"])
    expected, num_seen = run["expected"][last_gone], int(run["seen"][last_gone].sum())
    num_examples = 1000.0
    for method in METHODS:
        weights = jwxent.class_balance_weights(
            state, method=method, normalize=normalize, beta=0.99, num_examples=num_examples
        )
        reference = ref.class_weights_from_counts(expected * num_examples, method, normalize, 0.99)
        assert_close(weights, reference, np.float32, terms=5, err_msg=method)
        assert float(weights[3]) > 0 and float(weights[4]) == 0.0
    # The caps of "inverse" stated in `class_balance_weights`.
    caps = {
        None: 1.0 / (DEFAULT_MIN_FREQUENCY * num_examples),
        "sum_to_one": 1.0,
        "sum_to_num_classes": num_seen,
        "mean_one": 1.0 + 1.0 / (num_seen * DEFAULT_MIN_FREQUENCY),
    }
    inverse = jwxent.class_balance_weights(state, normalize=normalize, num_examples=num_examples)
    assert np.all(np.asarray(inverse) <= caps[normalize] * (1 + 1e-5))


def test_min_frequency_sets_the_floor_inside_scan():
    min_frequency, decay = 1e-3, 0.9

    def step(state, labels):
        state = jwxent.class_balance_update(state, labels, decay=decay, min_frequency=min_frequency)
        return state, jwxent.class_balance_weights(state)

    # Classes 0 to 2 appear once; class 2 then vanishes for 2000 batches
    # (0.9^2000 underflows float32); class 3 never appears.
    first = np.array([[0, 1, 2, 0]], np.int32)
    labels = np.concatenate([first, np.tile(np.array([[0, 1, 1, 0]], np.int32), (2000, 1))])
    state, weights = jax.jit(lambda s, y: jax.lax.scan(step, s, y))(
        jwxent.class_balance_init(4), labels
    )
    counts = np.stack([np.bincount(row, minlength=4) for row in labels])
    expected, _ = floored_ema(counts, decay, min_frequency)
    assert_close(jwxent.class_balance_frequencies(state), expected[-1], np.float32, terms=10)
    np.testing.assert_allclose(float(state.ema[2]), min_frequency * float(state.bias_correction))
    weights = np.asarray(weights)
    assert np.all(np.isfinite(weights)) and np.all(weights[:, 2] > 0)
    assert np.all(weights <= (1.0 + 1.0 / (3 * min_frequency)) * (1 + 1e-5))
    np.testing.assert_array_equal(weights[:, 3], 0.0)
    # The weight of the vanished class, Σ f̂ / (3 f_min), from the float64 EMA.
    assert_close(weights[-1, 2], expected[-1].sum() / (3 * min_frequency), np.float32, terms=10)


def test_min_frequency_at_its_bound_floors_at_the_uniform_frequency():
    """`min_frequency = 1/C` is accepted (the bound is inclusive) and floors every seen
    class at the uniform frequency; a hair above it is refused."""
    num_classes, decay = 4, 0.5
    bound = 1.0 / num_classes
    labels = np.array([[0, 1, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.int32)
    state = jwxent.class_balance_init(num_classes)
    for row in labels:
        state = jwxent.class_balance_update(state, row, decay=decay, min_frequency=bound)
    counts = np.stack([np.bincount(row, minlength=num_classes) for row in labels])
    expected, _ = floored_ema(counts, decay, bound)
    assert_close(jwxent.class_balance_frequencies(state), expected[-1], np.float32, terms=10)
    np.testing.assert_allclose(
        np.asarray(state.ema[1:3]), bound * float(state.bias_correction), rtol=1e-6
    )
    with pytest.raises(ValueError, match="`min_frequency` must be in"):
        jwxent.class_balance_update(state, labels[0], min_frequency=float(np.nextafter(bound, 1.0)))


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: jwxent.class_counts(jnp.array([0, 1]), 2.0),
            TypeError,
            "`num_classes` must be a Python int",
        ),
        (
            lambda: jwxent.class_counts(jnp.array([0, 1]), 0),
            ValueError,
            "`num_classes` must be >= 1",
        ),
        (
            lambda: jwxent.class_counts(jnp.array([True]), 2),
            TypeError,
            "`labels` must be an integer",
        ),
        (
            lambda: jwxent.class_counts(jnp.ones((4, 3)), 2),
            ValueError,
            r"`labels` must have shape \(4, 2\)",
        ),
        (
            lambda: jwxent.class_counts(jnp.ones((4, 2)), 2, ignore_index=0),
            ValueError,
            "`ignore_index` applies",
        ),
        (
            lambda: jwxent.class_counts(jnp.ones(4, jnp.int32), 2, where=jnp.ones(3, bool)),
            ValueError,
            "`where` of shape",
        ),
        (
            lambda: jwxent.class_counts(jnp.ones(4, jnp.int32), 2, weights=jnp.ones((4, 4))),
            ValueError,
            "`weights` of shape",
        ),
        (
            lambda: jwxent.class_weights_from_counts(jnp.array([True, False])),
            TypeError,
            "`counts` must be an integer or floating-point array, got dtype bool",
        ),
        (
            lambda: jwxent.class_weights_from_counts(jnp.ones((2, 2))),
            ValueError,
            r"`counts` must be 1-D \(\[num_classes\]\); got shape \(2, 2\)",
        ),
        (
            lambda: jwxent.class_weights_from_counts(jnp.array([1.0, -2.0])),
            ValueError,
            r"`counts` must be >= 0; got -2.0 at index \(1,\)",
        ),
        (
            lambda: jwxent.class_weights_from_counts(jnp.ones(2), method="inv"),
            ValueError,
            "`method` must be one of 'inverse', 'inverse_sqrt', 'balanced', "
            "'effective_number', 'median_frequency'; got 'inv'",
        ),
        (
            lambda: jwxent.class_weights_from_counts(jnp.ones(2), normalize="sum"),
            ValueError,
            "`normalize` must be one of 'sum_to_one', 'sum_to_num_classes', 'mean_one'; got 'sum'",
        ),
        (
            lambda: jwxent.class_weights_from_counts(jnp.ones(2), beta=1.0),
            ValueError,
            r"`beta` must be in \[0, 1\); got 1.0",
        ),
        (
            lambda: jwxent.class_weights_from_counts(jnp.ones(2), beta=jnp.array(0.9)),
            TypeError,
            "`beta` must be a Python float",
        ),
        (
            lambda: jwxent.cost_matrix_from_class_weights(jnp.ones(3), by="truth"),
            ValueError,
            "`by` must be one of 'label', 'prediction'",
        ),
        (
            lambda: jwxent.cost_matrix_from_class_weights(jnp.ones((3, 3)), by="label"),
            ValueError,
            "`class_weights` must be 1-D",
        ),
        (
            lambda: jwxent.cost_matrix_from_class_weights(jnp.arange(3), by="label"),
            TypeError,
            "`class_weights` must be a floating-point",
        ),
        (
            lambda: jwxent.class_balance_init(jnp.array(3)),
            TypeError,
            "`num_classes` must be a Python int",
        ),
        (
            lambda: jwxent.class_balance_update(
                jwxent.class_balance_init(3), jnp.array([0]), decay=1.0
            ),
            ValueError,
            r"`decay` must be in \[0, 1\)",
        ),
        (
            lambda: jwxent.class_balance_update(
                jwxent.class_balance_init(3), jnp.array([0]), min_frequency=0.0
            ),
            ValueError,
            r"`min_frequency` must be in \(0, 1/num_classes\] = \(0, 0.333333\] "
            r"\(num_classes=3\); got 0.0",
        ),
        (
            lambda: jwxent.class_balance_update(
                jwxent.class_balance_init(4), jnp.array([0]), min_frequency=0.5
            ),
            ValueError,
            r"`min_frequency` must be in \(0, 1/num_classes\] = \(0, 0.25\]",
        ),
        (
            lambda: jwxent.class_balance_update(
                jwxent.class_balance_init(3), jnp.array([0]), min_frequency=jnp.array(0.01)
            ),
            TypeError,
            "`min_frequency` must be a Python float",
        ),
        (
            lambda: jwxent.class_balance_update(jwxent.class_balance_init(3), jnp.array([3])),
            ValueError,
            r"`labels` must be in \[0, 3\)",
        ),
        (
            lambda: jwxent.class_balance_weights(
                jwxent.class_balance_init(3), method="effective_number"
            ),
            ValueError,
            "needs `num_examples`",
        ),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_static_checks_run_under_jit():
    # Static checks still run under jit; value checks need concrete values.
    with pytest.raises(ValueError, match="`method` must be one of"):
        jax.jit(lambda c: jwxent.class_weights_from_counts(c, method="nope"))(jnp.ones(2))
    weights = jax.jit(jwxent.class_weights_from_counts)(jnp.array([2.0, 0.0]))
    np.testing.assert_array_equal(weights, [0.5, 0.0])


# ---------------------------------------------------------------------------
# The guide page's code runs and prints what its comments say
# ---------------------------------------------------------------------------


def test_choosing_class_weights_page_examples():
    page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "class_weights.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)
    assert len(blocks) == 6
    namespace = {}
    exec(blocks[0], namespace)  # labels -> counts -> balanced weights -> loss
    np.testing.assert_array_equal(namespace["counts"], [6.0, 3.0, 1.0])
    assert_close(namespace["class_weights"], [10 / 18, 10 / 9, 10 / 3], np.float32)
    assert_close(namespace["loss"], np.log(3.0), np.float32, terms=10)
    exec(blocks[1], namespace)  # segmentation with ignore_index, median frequency
    np.testing.assert_array_equal(namespace["counts"], [5.0, 3.0, 1.0])
    assert_close(namespace["class_weights"], [0.6, 1.0, 3.0], np.float32)
    exec(blocks[2], namespace)  # a zero count, and a pseudo-count
    counts = namespace["counts"]
    np.testing.assert_array_equal(counts, [6.0, 3.0, 1.0, 0.0])
    assert_close(jwxent.class_weights_from_counts(counts), [1 / 6, 1 / 3, 1.0, 0.0], np.float32)
    assert_close(
        jwxent.class_weights_from_counts(counts + 1.0), [1 / 7, 1 / 4, 1 / 2, 1.0], np.float32
    )
    exec(blocks[3], namespace)  # the online estimator in an optax train step
    frequencies = jwxent.class_balance_frequencies(namespace["balance"])
    assert_close(frequencies, [0.625, 0.25, 0.125], np.float32)
    exec(blocks[4], namespace)  # a class that vanishes for 1000 batches and comes back
    counts = np.array([[2, 1, 1]] + [[2, 2, 0]] * 1000 + [[2, 1, 1]] * 50)
    expected, _ = floored_ema(counts, 0.9, 0.01 / 3)
    gone, back = expected[1000], expected[-1]
    assert_close(namespace["gone"], gone, np.float32, terms=100)
    assert_close(gone, [0.5, 0.5, 0.01 / 3], np.float64, terms=100)  # held at the floor
    cap = 1 + 1 / (3 * 0.01 / 3)
    assert_close(namespace["gone_weights"], gone.sum() / (3 * gone), np.float32, terms=100)
    assert float(np.max(namespace["gone_weights"])) <= cap
    assert_close(namespace["back"], back, np.float32, terms=100)
    np.testing.assert_allclose(back, [0.5, 0.25, 0.25], atol=2 * 0.9**50)
    exec(blocks[5], namespace)  # cost matrices
    assert_close(namespace["by_label"], np.repeat([[1.0], [2.0], [3.0]], 3, axis=1), np.float32)
    expected = ref.softmax_cross_entropy_with_integer_labels(
        np.zeros((10, 3)),
        np.asarray(namespace["labels"]),
        cost_matrix=np.outer([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]),
    )
    assert_close(namespace["loss"], expected, np.float32)
