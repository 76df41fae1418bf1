"""Drop-in parity with optax: same values and gradients with optax's arguments alone."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import losses as optax_losses

import jwxent
from tests._tolerance import assert_close
from tests.test_softmax import make_inputs

# optax's own tests run on jwxent in tests/test_optax_suite.py; these compare
# values and gradients with optax's on random inputs of every rank.
SHAPES = [(7,), (2, 3, 9), (5, 1)]


def _grad_pair(ours, theirs, *args, argnums=0):
    """Values and gradients of Σ f(args) for two functions."""
    summed = [lambda *a, f=f: jnp.sum(f(*a)) for f in (ours, theirs)]
    return [jax.value_and_grad(f, argnums=argnums)(*args) for f in summed]


def _assert_same(pair, shape):
    (value, grad), (expected_value, expected_grad) = pair
    terms = int(np.prod(shape))
    assert_close(value, expected_value, jnp.float32, terms)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float32, terms), grad, expected_grad)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_integer_labels(shape):
    d = make_inputs(shape)
    pair = _grad_pair(
        jwxent.softmax_cross_entropy_with_integer_labels,
        optax_losses.softmax_cross_entropy_with_integer_labels,
        d["logits"],
        d["labels"],
    )
    _assert_same(pair, shape)


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "safe_softmax_cross_entropy"])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=str)
def test_probability_labels(name, shape):
    d = make_inputs(shape)
    pair = _grad_pair(
        getattr(jwxent, name), getattr(optax_losses, name), d["logits"], d["probs"], argnums=(0, 1)
    )
    _assert_same(pair, shape)


@pytest.mark.parametrize("epsilon", [2.0, -1.0, 0.5])
def test_poly_loss(epsilon):
    d = make_inputs((4, 6))
    pair = _grad_pair(
        lambda z, q: jwxent.poly_loss_cross_entropy(z, q, epsilon=epsilon),
        lambda z, q: optax_losses.poly_loss_cross_entropy(z, q, epsilon=epsilon),
        d["logits"],
        d["probs"],
        argnums=(0, 1),
    )
    _assert_same(pair, (4, 6))


@pytest.mark.parametrize("mask_kind", ["examples", "logits"])
def test_where_semantics(mask_kind):
    d = make_inputs((6, 5), seed=3)
    where = jnp.asarray(d["where"] if mask_kind == "examples" else d["class_mask"])
    cases = [
        (
            jwxent.softmax_cross_entropy_with_integer_labels,
            optax_losses.softmax_cross_entropy_with_integer_labels,
            d["labels"],
        ),
        (jwxent.softmax_cross_entropy, optax_losses.softmax_cross_entropy, d["probs"]),
    ]
    if mask_kind == "logits":  # optax's poly loss accepts only a logits-shaped `where`
        cases.append(
            (jwxent.poly_loss_cross_entropy, optax_losses.poly_loss_cross_entropy, d["probs"])
        )
    for ours, theirs, labels in cases:
        pair = _grad_pair(
            lambda z, y, f=ours: f(z, y, where=where),
            lambda z, y, f=theirs: f(z, y, where=where),
            d["logits"],
            labels,
        )
        _assert_same(pair, (6, 5))


@pytest.mark.parametrize("axis", [0, (2, 0)])
def test_axis(axis):
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((3, 4, 5)).astype(np.float32)
    axes = (axis,) if isinstance(axis, int) else axis
    batch_shape = tuple(n for a, n in enumerate(logits.shape) if a not in axes)
    num_classes = int(np.prod([logits.shape[a] for a in axes]))
    labels = rng.integers(0, num_classes, size=batch_shape).astype(np.int32)
    pair = _grad_pair(
        lambda z: jwxent.softmax_cross_entropy_with_integer_labels(z, labels, axis=axis),
        lambda z: optax_losses.softmax_cross_entropy_with_integer_labels(z, labels, axis=axis),
        logits,
    )
    _assert_same(pair, logits.shape)
    probs = rng.dirichlet(np.ones(3), size=(4, 5)).astype(np.float32).transpose(2, 0, 1)
    pair = _grad_pair(
        lambda z: jwxent.softmax_cross_entropy(z, probs, axis=0),
        lambda z: optax_losses.softmax_cross_entropy(z, probs, axis=0),
        logits,
    )
    _assert_same(pair, logits.shape)


def test_positional_arguments_are_optax_s():
    d = make_inputs((6, 5), seed=5)
    where = jnp.asarray(d["where"])
    ours = jwxent.softmax_cross_entropy_with_integer_labels(d["logits"], d["labels"], -1, where)
    theirs = optax_losses.softmax_cross_entropy_with_integer_labels(
        d["logits"], d["labels"], -1, where
    )
    assert_close(ours, theirs, jnp.float32, terms=5)


def test_jitted_optax_training_loop_loss_falls():
    """50 steps of a class-weighted linear classifier inside one jitted step."""
    rng = np.random.default_rng(6)
    num_classes, features = 4, 8
    centers = 2.0 * rng.standard_normal((num_classes, features))
    labels = rng.choice(num_classes, size=256, p=[0.7, 0.2, 0.07, 0.03]).astype(np.int32)
    x = (centers[labels] + rng.standard_normal((256, features))).astype(np.float32)
    counts = np.bincount(labels, minlength=num_classes)
    class_weights = jnp.asarray(counts.sum() / (num_classes * counts), jnp.float32)
    params = {"w": jnp.zeros((features, num_classes)), "b": jnp.zeros(num_classes)}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(5e-2))

    def loss_fn(params, x, y):
        logits = x @ params["w"] + params["b"][None, :]
        return jwxent.softmax_cross_entropy_with_integer_labels(
            logits, y, class_weights=class_weights, reduction="weighted_mean"
        )

    @jax.jit
    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    # optax's own update rules rely on standard promotion (float ** int32 step count).
    with jax.numpy_dtype_promotion("standard"):
        opt_state = tx.init(params)
        for _ in range(50):
            params, opt_state, loss = train_step(params, opt_state, x, labels)
            losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0]
    assert losses[0] == pytest.approx(np.log(num_classes), rel=1e-5)
