"""Properties that hold for every input (hypothesis, deterministic `ci` profile)."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import jwxent
from tests._tolerance import assert_close

# A small fixed set of shapes keeps compilation bounded.
SHAPES = [(3, 4), (5, 7), (2, 1)]


@st.composite
def problems(draw):
    """Logits, labels, probability labels, weights and class weights of one shape."""
    shape = draw(st.sampled_from(SHAPES))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    batch, num_classes = shape
    scale = draw(st.sampled_from([0.1, 1.0, 10.0]))
    return {
        "logits": (scale * rng.standard_normal(shape)).astype(np.float32),
        "labels": rng.integers(0, num_classes, batch).astype(np.int32),
        "probs": rng.dirichlet(np.ones(num_classes), batch).astype(np.float32),
        "weights": rng.uniform(0.1, 2.0, batch).astype(np.float32),
        "class_weights": rng.uniform(0.1, 3.0, num_classes).astype(np.float32),
        "label_smoothing": draw(st.sampled_from([0.0, 0.1])),
    }


def _integer(p, logits=None, reduction="none", **overrides):
    kwargs = {
        "weights": p["weights"],
        "class_weights": p["class_weights"],
        "label_smoothing": p["label_smoothing"],
        "reduction": reduction,
        **overrides,
    }
    return jwxent.softmax_cross_entropy_with_integer_labels(
        p["logits"] if logits is None else logits, p["labels"], **kwargs
    )


@given(problems(), st.floats(-50.0, 50.0))
def test_shift_invariance(p, shift):
    shifted = p["logits"] + np.float32(shift)
    assert_close(_integer(p, shifted), _integer(p), jnp.float32, terms=400)


@given(problems(), st.randoms(use_true_random=False))
def test_class_permutation_invariance(p, random):
    num_classes = p["logits"].shape[-1]
    permutation = np.array(random.sample(range(num_classes), num_classes))
    inverse = np.argsort(permutation)
    permuted = {
        **p,
        "logits": p["logits"][:, permutation],
        "labels": inverse[p["labels"]].astype(np.int32),
        "class_weights": p["class_weights"][permutation],
    }
    assert_close(_integer(permuted), _integer(p), jnp.float32, terms=20)
    soft = jwxent.softmax_cross_entropy(p["logits"], p["probs"], class_weights=p["class_weights"])
    soft_permuted = jwxent.softmax_cross_entropy(
        p["logits"][:, permutation],
        p["probs"][:, permutation],
        class_weights=p["class_weights"][permutation],
    )
    assert_close(soft_permuted, soft, jnp.float32, terms=20)


@given(problems())
def test_gradient_rows_sum_to_zero(p):
    """Without z-loss the loss is shift invariant, so each gradient row sums to 0."""
    grad = jax.grad(lambda z: _integer(p, z, "sum"))(p["logits"])
    row_scale = np.abs(np.asarray(grad)).sum(-1).max() + 1.0
    np.testing.assert_allclose(np.asarray(grad).sum(-1), 0.0, atol=1e-5 * row_scale)
    soft_grad = jax.grad(lambda z: jwxent.softmax_cross_entropy(z, p["probs"], reduction="sum"))(
        p["logits"]
    )
    np.testing.assert_allclose(np.asarray(soft_grad).sum(-1), 0.0, atol=1e-5)


@given(problems())
def test_sum_of_none_is_sum(p):
    assert_close(jnp.sum(_integer(p)), _integer(p, reduction="sum"), jnp.float32, terms=20)


@given(problems(), st.floats(0.01, 100.0))
def test_scaling_weights(p, factor):
    """Scaling `weights` scales `sum` and leaves `weighted_mean` unchanged."""
    scaled = p["weights"] * np.float32(factor)
    assert_close(
        _integer(p, reduction="sum", weights=scaled),
        factor * _integer(p, reduction="sum"),
        jnp.float32,
        terms=20,
    )
    assert_close(
        _integer(p, reduction="weighted_mean", weights=scaled),
        _integer(p, reduction="weighted_mean"),
        jnp.float32,
        terms=20,
    )


@given(problems())
def test_one_hot_labels_equal_integer_labels(p):
    one_hot = np.eye(p["logits"].shape[-1], dtype=np.float32)[p["labels"]]
    soft = jwxent.softmax_cross_entropy(
        p["logits"],
        one_hot,
        weights=p["weights"],
        class_weights=p["class_weights"],
        label_smoothing=p["label_smoothing"],
        reduction="weighted_mean",
    )
    assert_close(soft, _integer(p, reduction="weighted_mean"), jnp.float32, terms=20)
