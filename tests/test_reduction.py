"""The reduction conventions of `docs/semantics.md` ("Reductions"), each against its
definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jwxent import _reduction
from tests import _references as ref
from tests._tolerance import assert_close

RNG = np.random.default_rng(0)
VALUES = RNG.uniform(0.0, 3.0, size=(3, 4)).astype(np.float32)
WEIGHT = np.where(RNG.random((3, 4)) < 0.3, 0.0, RNG.uniform(0.5, 2.0, (3, 4))).astype(np.float32)
MASK = RNG.random((3, 4)) < 0.7


@pytest.mark.parametrize(
    "reduction", ["none", "sum", "mean", "weighted_mean", "sum_by_nonzero_weights"]
)
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("with_weight", [False, True])
def test_reduce_loss_matches_definition(reduction, with_mask, with_weight):
    mask = MASK if with_mask else None
    weight = WEIGHT if with_weight else None
    actual = _reduction.reduce_loss(
        jnp.asarray(VALUES),
        reduction,
        mask=None if mask is None else jnp.asarray(mask),
        weight=None if weight is None else jnp.asarray(weight),
    )
    assert_close(actual, ref.reduce(VALUES, reduction, mask, weight), jnp.float32, terms=12)


def test_mean_divides_by_unmasked_count_not_by_weights():
    """Keras `sum_over_batch_size`: zero weights still count, masked entries do not."""
    values = jnp.array([1.0, 2.0, 3.0, 4.0])
    mask = jnp.array([True, True, True, False])
    weighted = values * jnp.array([0.0, 1.0, 1.0, 1.0])
    assert _reduction.reduce_loss(weighted, "mean", mask=mask) == pytest.approx(5.0 / 3.0)


@pytest.mark.parametrize("reduction", ["mean", "weighted_mean", "sum_by_nonzero_weights"])
def test_zero_denominator_gives_zero_loss_and_gradient(reduction):
    def loss(values, weight):
        return _reduction.reduce_loss(
            values,
            reduction,
            mask=jnp.zeros(4, bool) if reduction == "mean" else None,
            weight=weight,
        )

    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(jnp.ones(4), jnp.zeros(4))
    assert value == 0
    assert np.all(np.asarray(grads[0]) == 0) and np.all(np.asarray(grads[1]) == 0)


def test_weighted_mean_gradient_includes_the_denominator():
    values, weight = jnp.array([1.0, 3.0]), jnp.array([1.0, 1.0])
    grad = jax.grad(lambda w: _reduction.reduce_loss(values * w, "weighted_mean", weight=w))(weight)
    # d/dw_i (Σ w v / Σ w) = (v_i − mean) / Σ w
    np.testing.assert_allclose(grad, [(1.0 - 2.0) / 2.0, (3.0 - 2.0) / 2.0])


def test_unknown_reduction_lists_valid_ones():
    with pytest.raises(ValueError, match=r"'weighted_mean'.*got 'max'"):
        _reduction.reduce_loss(jnp.ones(2), "max")  # type: ignore[arg-type]
