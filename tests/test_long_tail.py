"""Long-tail tools and the loss keywords they feed, against the papers' formulas.

The references below are float64 NumPy, written from Menon et al. 2021 (logit
adjustment), Ren et al. 2020 (balanced softmax) and the official LDAM-DRW code
(github.com/kaidic/LDAM-DRW: `losses.py` for the margins and the loss,
`cifar_train.py` for the deferred effective-number weights). Gradients are
checked against float64 finite differences of those references, or against a
plain-JAX autodiff twin of them run in float64.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jwxent

# Two absent classes, a count of 1, ties, large counts.
COUNTS = np.array([500, 0, 40, 1, 120, 40, 0, 7], np.int64)
ALL_PRESENT = np.array([500, 3, 40, 1, 120, 41, 9, 7], np.int64)
RTOL = 2e-6  # float32 results against float64 references


def assert_f32_close(actual, expected, rtol=RTOL, atol=1e-6):
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol
    )


# ---------------------------------------------------------------------------
# References: float64 NumPy from the papers and the official LDAM-DRW code.
# ---------------------------------------------------------------------------


def ref_log_prior(counts):
    """log π with π = n / Σn (Menon et al.); absent classes: half the smallest present prior."""
    n = np.asarray(counts, np.float64)
    if not np.any(n > 0):
        return np.full(n.shape, -np.log(n.size))
    prior = n / n.sum()
    floor = prior[n > 0].min() / 2
    return np.log(np.where(n > 0, prior, floor))


def ref_ldam_margins(counts, max_m=0.5):
    """LDAM-DRW `LDAMLoss.__init__` over the present classes; absent classes get `max_m`."""
    n = np.asarray(counts, np.float64)
    margins = np.full(n.shape, float(max_m))
    cls_num_list = n[n > 0]
    if cls_num_list.size:
        m_list = 1.0 / np.sqrt(np.sqrt(cls_num_list))
        m_list = m_list * (max_m / np.max(m_list))
        margins[n > 0] = m_list
    return margins


def ref_drw_weights(cls_num_list, beta=0.9999):
    """LDAM-DRW `cifar_train.py`, `train_rule == 'DRW'`, after the deferral epoch."""
    effective_num = 1.0 - np.power(beta, cls_num_list)
    per_cls_weights = (1.0 - beta) / np.array(effective_num)
    return per_cls_weights / np.sum(per_cls_weights) * len(cls_num_list)


def ref_log_softmax(z):
    z = np.asarray(z, np.float64)
    shifted = z - z.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def ref_balanced_softmax_nll(logits, labels, counts, tau=1.0):
    """−log softmax(z + τ log π)_y (Menon et al. eq. 10; τ = 1 is Ren et al.'s balanced softmax)."""
    adjusted = np.asarray(logits, np.float64) + tau * ref_log_prior(counts)[None, :]
    return -np.take_along_axis(ref_log_softmax(adjusted), labels[:, None], -1)[:, 0]


def ref_ldam_loss(x, target, m_list, s, weight):
    """LDAM-DRW `LDAMLoss.forward`: `F.cross_entropy(s * output, target, weight=weight)`.

    `output` is `x` with `m_list[target]` subtracted from the target's entry;
    PyTorch's weighted mean divides by the summed weights of the targets.
    """
    x = np.asarray(x, np.float64)
    index = np.eye(x.shape[1], dtype=bool)[target]
    batch_m = np.asarray(m_list, np.float64)[target][:, None]
    output = np.where(index, x - batch_m, x)
    nll = -ref_log_softmax(s * output)[index]
    w = np.asarray(weight, np.float64)[target]
    return np.sum(w * nll) / np.sum(w)


def twin_ldam_loss(x, target, m_list, s, weight):
    """`ref_ldam_loss` in plain JAX (no custom derivative), for gradients in float64."""
    index = jax.nn.one_hot(target, x.shape[1], dtype=bool)
    output = jnp.where(index, x - m_list[target][:, None], x)
    nll = -jnp.sum(jnp.where(index, jax.nn.log_softmax(s * output), 0.0), axis=-1)
    w = weight[target]
    return jnp.sum(w * nll) / jnp.sum(w)


def twin_balanced_softmax_nll(logits, labels, log_prior):
    """`ref_balanced_softmax_nll` in plain JAX, for gradients in float64."""
    log_p = jax.nn.log_softmax(logits + log_prior[None, :])
    return -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]


def central_differences(f, x, relative_step=1e-6):
    """Jacobian `[out, in]` of a float64 NumPy function by central differences."""
    x = np.asarray(x, np.float64)
    columns = []
    for i in range(x.size):
        h = relative_step * max(abs(x[i]), 1.0)
        step = np.zeros_like(x)
        step[i] = h
        columns.append((f(x + step) - f(x - step)) / (2 * h))
    return np.stack(columns, axis=-1)


def random_problem(batch=12, seed=0):
    num_classes = len(COUNTS)
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.standard_normal((batch, num_classes))).astype(np.float32)
    labels = rng.integers(0, num_classes, batch).astype(np.int32)
    return logits, labels


# ---------------------------------------------------------------------------
# logit_adjustment_from_counts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.0, 2.0])
@pytest.mark.parametrize("counts", [COUNTS, ALL_PRESENT], ids=["zeros", "all_present"])
def test_logit_adjustment_values(counts, tau):
    offsets = jwxent.logit_adjustment_from_counts(counts, tau=tau)
    assert offsets.shape == counts.shape and offsets.dtype == jnp.float32
    assert_f32_close(offsets, tau * ref_log_prior(counts))


def test_logit_adjustment_of_float_counts_is_scale_free_and_float64_stays_float64():
    counts = COUNTS.astype(np.float32) * np.float32(0.01)  # frequencies, not examples
    assert_f32_close(jwxent.logit_adjustment_from_counts(counts), ref_log_prior(COUNTS))
    with jax.enable_x64(True):
        offsets = jwxent.logit_adjustment_from_counts(COUNTS.astype(np.float64))
        assert offsets.dtype == jnp.float64
        np.testing.assert_allclose(offsets, ref_log_prior(COUNTS), rtol=1e-13)


def test_zero_counts_get_a_finite_offset_below_the_rarest_class():
    offsets = np.asarray(jwxent.logit_adjustment_from_counts(COUNTS))
    assert np.all(np.isfinite(offsets))
    rarest = offsets[COUNTS == 1][0]
    np.testing.assert_allclose(offsets[COUNTS == 0], rarest - np.log(2.0), rtol=1e-6)
    # Appending absent classes leaves the present classes' offsets as they were.
    present = np.asarray(jwxent.logit_adjustment_from_counts(COUNTS[COUNTS > 0]))
    np.testing.assert_array_equal(offsets[COUNTS > 0], present)


def test_all_zero_counts_give_the_uniform_prior():
    offsets = jwxent.logit_adjustment_from_counts(np.zeros(4, np.int32))
    assert_f32_close(offsets, np.full(4, np.log(0.25)))
    grad = jax.jit(jax.jacrev(jwxent.logit_adjustment_from_counts))(jnp.zeros(4, jnp.float32))
    assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("counts", [COUNTS, ALL_PRESENT], ids=["zeros", "all_present"])
def test_logit_adjustment_gradient_wrt_counts(counts):
    tau = 0.7
    jacobian = np.asarray(
        jax.jit(jax.jacrev(lambda n: jwxent.logit_adjustment_from_counts(n, tau=tau)))(
            jnp.asarray(counts, jnp.float32)
        )
    )
    assert np.all(np.isfinite(jacobian))
    present = counts > 0
    # Away from zero counts the rule is smooth: finite differences of the reference.
    expected = central_differences(lambda n: tau * ref_log_prior(n), counts)
    assert_f32_close(jacobian[:, present], expected[:, present], atol=1e-7)


def test_logit_adjustment_gradient_wrt_tau_is_log_prior():
    grad = jax.grad(lambda t: jnp.sum(jwxent.logit_adjustment_from_counts(COUNTS, tau=t)))(0.3)
    assert_f32_close(grad, np.sum(ref_log_prior(COUNTS)))


def test_logit_adjustment_with_a_traced_tau_and_a_tau_sweep():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def offsets(counts, tau):
        return jwxent.logit_adjustment_from_counts(counts, tau=tau)

    for tau in (1.0, 0.25):
        assert_f32_close(offsets(COUNTS, jnp.float32(tau)), tau * ref_log_prior(COUNTS))
    taus = np.array([0.0, 0.5, 1.0, 1.5], np.float32)
    swept = jax.vmap(lambda t: jwxent.logit_adjustment_from_counts(COUNTS, tau=t))(taus)
    assert swept.shape == (4, len(COUNTS))
    assert_f32_close(swept, taus.astype(np.float64)[:, None] * ref_log_prior(COUNTS)[None, :])


# ---------------------------------------------------------------------------
# post_hoc_logit_adjustment
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8,), (5, 8), (2, 3, 8)])
def test_post_hoc_adjustment_subtracts_tau_log_prior_on_the_last_axis(shape):
    logits = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    adjusted = jwxent.post_hoc_logit_adjustment(logits, COUNTS, tau=0.8)
    assert adjusted.shape == shape and adjusted.dtype == jnp.float32
    expected = logits.astype(np.float64) - 0.8 * ref_log_prior(COUNTS)
    assert_f32_close(adjusted, expected)


def test_post_hoc_adjustment_keeps_half_precision_and_differentiates():
    logits, _ = random_problem()
    adjusted = jwxent.post_hoc_logit_adjustment(logits.astype(jnp.bfloat16), COUNTS)
    assert adjusted.dtype == jnp.bfloat16
    expected = logits.astype(jnp.bfloat16).astype(np.float64) - ref_log_prior(COUNTS)
    np.testing.assert_allclose(np.asarray(adjusted, np.float64), expected, rtol=2**-7)
    tau_grad = jax.grad(lambda t: jnp.sum(jwxent.post_hoc_logit_adjustment(logits, COUNTS, tau=t)))(
        1.0
    )
    assert_f32_close(tau_grad, -logits.shape[0] * np.sum(ref_log_prior(COUNTS)), rtol=1e-5)


def test_post_hoc_adjustment_moves_predictions_to_rare_classes_under_jit():
    logits = np.zeros((3, len(COUNTS)), np.float32)
    predict = jax.jit(
        lambda z, t: jnp.argmax(jwxent.post_hoc_logit_adjustment(z, COUNTS, tau=t), -1)
    )
    # Flat logits: the adjusted prediction is the rarest class, an absent one (first index).
    np.testing.assert_array_equal(predict(logits, 1.0), [1, 1, 1])
    np.testing.assert_array_equal(predict(logits, 0.0), [0, 0, 0])


# ---------------------------------------------------------------------------
# ldam_margins
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_margin", [0.5, 0.3, 1.0])
@pytest.mark.parametrize("counts", [COUNTS, ALL_PRESENT], ids=["zeros", "all_present"])
def test_ldam_margins_match_the_official_code(counts, max_margin):
    margins = jwxent.ldam_margins(counts, max_margin=max_margin)
    assert margins.shape == counts.shape and margins.dtype == jnp.float32
    assert_f32_close(margins, ref_ldam_margins(counts, max_margin))
    assert float(jnp.max(margins)) == pytest.approx(max_margin, rel=1e-6)


def test_ldam_margins_of_absent_classes_are_the_largest_and_finite():
    margins = np.asarray(jwxent.ldam_margins(COUNTS))
    np.testing.assert_array_equal(margins[COUNTS == 0], np.float32(0.5))
    assert_f32_close(jwxent.ldam_margins(np.zeros(3, np.int32)), np.full(3, 0.5))
    present = np.asarray(jwxent.ldam_margins(COUNTS[COUNTS > 0]))
    np.testing.assert_array_equal(margins[COUNTS > 0], present)


@pytest.mark.parametrize("counts", [COUNTS, ALL_PRESENT], ids=["zeros", "all_present"])
def test_ldam_margins_gradient_wrt_counts_and_max_margin(counts):
    jacobian = np.asarray(
        jax.jit(jax.jacrev(lambda n: jwxent.ldam_margins(n, max_margin=0.4)))(
            jnp.asarray(counts, jnp.float32)
        )
    )
    assert np.all(np.isfinite(jacobian))
    present = counts > 0
    expected = central_differences(lambda n: ref_ldam_margins(n, 0.4), counts)
    assert_f32_close(jacobian[:, present], expected[:, present], atol=1e-7)
    d_max = jax.jacrev(lambda m: jwxent.ldam_margins(counts, max_margin=m))(0.4)
    assert_f32_close(d_max, ref_ldam_margins(counts, 1.0))


def test_ldam_margins_with_traced_max_margin():
    margins = jax.jit(lambda m: jwxent.ldam_margins(COUNTS, max_margin=m))(jnp.float32(0.25))
    assert_f32_close(margins, ref_ldam_margins(COUNTS, 0.25))
    swept = jax.vmap(lambda m: jwxent.ldam_margins(COUNTS, max_margin=m))(jnp.ones(2, jnp.float32))
    assert_f32_close(swept, np.stack([ref_ldam_margins(COUNTS, 1.0)] * 2))


# ---------------------------------------------------------------------------
# deferred_reweighting
# ---------------------------------------------------------------------------


def test_deferred_reweighting_switches_at_start_step_under_jit():
    weights = ref_drw_weights(ALL_PRESENT).astype(np.float32)
    schedule = jwxent.deferred_reweighting(weights, start_step=10)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def weights_at(step):
        return schedule(step)

    for step in (0, 9):
        np.testing.assert_array_equal(weights_at(jnp.int32(step)), np.ones_like(weights))
    for step in (10, 11, 1000):
        np.testing.assert_array_equal(weights_at(jnp.int32(step)), weights)
    np.testing.assert_array_equal(schedule(9), np.ones_like(weights))  # Python int step
    np.testing.assert_array_equal(jwxent.deferred_reweighting(weights, start_step=0)(0), weights)


def test_deferred_reweighting_in_a_scan_and_its_gradient():
    weights = jnp.asarray([0.5, 2.0, 4.0], jnp.float32)
    schedule = jwxent.deferred_reweighting(weights, start_step=3)
    _, per_step = jax.lax.scan(lambda c, t: (c, schedule(t)), None, jnp.arange(5))
    expected = np.stack([np.ones(3)] * 3 + [np.asarray(weights)] * 2)
    np.testing.assert_array_equal(per_step, expected)

    def total(cw, step):
        return jnp.sum(jwxent.deferred_reweighting(cw, start_step=3)(step))

    np.testing.assert_array_equal(jax.grad(total)(weights, 2), np.zeros(3))
    np.testing.assert_array_equal(jax.grad(total)(weights, 3), np.ones(3))


def test_drw_weights_are_class_weights_from_counts_effective_number():
    cw = jwxent.class_weights_from_counts(
        ALL_PRESENT, method="effective_number", beta=0.9999, normalize="sum_to_num_classes"
    )
    assert_f32_close(cw, ref_drw_weights(ALL_PRESENT), rtol=1e-5)


# ---------------------------------------------------------------------------
# The loss keywords, end to end.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_logit_adjusted_loss_is_the_balanced_softmax(tau):
    logits, labels = random_problem()
    offsets = jwxent.logit_adjustment_from_counts(COUNTS, tau=tau)
    loss = jwxent.softmax_cross_entropy_with_integer_labels(
        logits, labels, logit_adjustment=offsets
    )
    assert_f32_close(loss, ref_balanced_softmax_nll(logits, labels, COUNTS, tau), rtol=1e-5)
    log_prior = tau * ref_log_prior(COUNTS)
    grad = jax.jit(
        jax.grad(
            lambda z: jnp.sum(
                jwxent.softmax_cross_entropy_with_integer_labels(
                    z, labels, logit_adjustment=offsets
                )
            )
        )
    )(logits)
    with jax.enable_x64(True):
        expected = jax.jit(
            jax.grad(lambda z: jnp.sum(twin_balanced_softmax_nll(z, labels, log_prior)))
        )(jnp.asarray(logits, jnp.float64))
    assert_f32_close(grad, expected, rtol=1e-5)


def test_counts_gradient_through_the_logit_adjusted_loss():
    logits, labels = random_problem()

    def loss(counts):
        offsets = jwxent.logit_adjustment_from_counts(counts)
        return jnp.sum(
            jwxent.softmax_cross_entropy_with_integer_labels(
                logits, labels, logit_adjustment=offsets
            )
        )

    grad = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(ALL_PRESENT, jnp.float32)))
    expected = central_differences(
        lambda n: np.sum(ref_balanced_softmax_nll(logits, labels, n)), ALL_PRESENT
    )
    assert_f32_close(grad, expected, rtol=1e-4, atol=1e-6)


def test_ldam_drw_loss_matches_the_official_code():
    rng = np.random.default_rng(3)
    num_classes, s = len(ALL_PRESENT), 30.0
    features = rng.standard_normal((16, num_classes))
    cosines = (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)
    labels = rng.integers(0, num_classes, 16).astype(np.int32)
    margins = jwxent.ldam_margins(ALL_PRESENT)
    schedule = jwxent.deferred_reweighting(
        jwxent.class_weights_from_counts(
            ALL_PRESENT, method="effective_number", beta=0.9999, normalize="sum_to_num_classes"
        ),
        start_step=100,
    )

    def loss(x, step):
        return jwxent.softmax_cross_entropy_with_integer_labels(
            s * x,
            labels,
            label_margins=s * margins,
            class_weights=schedule(step),
            reduction="weighted_mean",
        )

    value_and_grad = jax.jit(jax.value_and_grad(loss))  # One compilation for both steps.
    m_list = ref_ldam_margins(ALL_PRESENT)
    with jax.enable_x64(True):
        twin_grad = jax.jit(jax.grad(twin_ldam_loss), static_argnums=3)
    for step, weight in ((0, np.ones(num_classes)), (100, ref_drw_weights(ALL_PRESENT))):
        value, grad = value_and_grad(cosines, step)
        assert_f32_close(value, ref_ldam_loss(cosines, labels, m_list, s, weight), rtol=1e-5)
        with jax.enable_x64(True):
            expected_grad = twin_grad(
                jnp.asarray(cosines, jnp.float64),
                labels,
                jnp.asarray(m_list),
                s,
                jnp.asarray(weight),
            )
        assert_f32_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# Bad inputs.
# ---------------------------------------------------------------------------

F32 = np.float32
LOGITS_8 = np.ones((2, 8), F32)
ADJUST = jwxent.logit_adjustment_from_counts
POST_HOC = jwxent.post_hoc_logit_adjustment
DRW = jwxent.deferred_reweighting

# (call, error, message): each message names the argument and what it got.
BAD_INPUTS = {
    "bool_counts": (lambda: ADJUST(np.ones(3, bool)), TypeError, "`counts`.*bool"),
    "2d_counts": (lambda: ADJUST(np.ones((2, 3))), ValueError, r"`counts` must be 1-D.*\(2, 3\)"),
    "no_class": (lambda: ADJUST(np.ones(0)), ValueError, r"`counts`.*\(0,\)"),
    "negative_count": (
        lambda: ADJUST(np.array([3.0, -1.0])),
        ValueError,
        r"`counts` must be >= 0; got -1.0 at index \(1,\)",
    ),
    "negative_tau": (lambda: ADJUST(COUNTS, tau=-0.5), ValueError, "`tau` must be >= 0; got -0.5"),
    "vector_tau": (
        lambda: ADJUST(COUNTS, tau=np.ones(2)),
        ValueError,
        r"`tau` must be a scalar; got shape \(2,\)",
    ),
    "string_tau": (lambda: ADJUST(COUNTS, tau="1"), TypeError, "`tau` must be a real number"),
    "bool_tau": (lambda: ADJUST(COUNTS, tau=np.array(True)), TypeError, "`tau`.*bool"),
    "ldam_negative_count": (
        lambda: jwxent.ldam_margins(np.array([1.0, -2.0])),
        ValueError,
        "`counts` must be >= 0",
    ),
    "negative_max_margin": (
        lambda: jwxent.ldam_margins(COUNTS, max_margin=-0.1),
        ValueError,
        "`max_margin` must be >= 0; got -0.1",
    ),
    "integer_logits": (
        lambda: POST_HOC(np.ones((2, 8), np.int32), COUNTS),
        TypeError,
        "`logits`.*int32",
    ),
    "scalar_logits": (
        lambda: POST_HOC(F32(1.0), COUNTS),
        ValueError,
        "`logits` must have a class axis",
    ),
    "counts_not_num_classes": (
        lambda: POST_HOC(np.ones((2, 5), F32), COUNTS),
        ValueError,
        r"`counts` must have shape \(5,\).*got \(8,\)",
    ),
    "post_hoc_negative_tau": (
        lambda: POST_HOC(LOGITS_8, COUNTS, tau=-1.0),
        ValueError,
        "`tau` must be >= 0",
    ),
    "integer_class_weights": (
        lambda: DRW(np.ones(3, np.int32), start_step=5),
        TypeError,
        "`class_weights`.*int32",
    ),
    "2d_class_weights": (
        lambda: DRW(np.ones((3, 1), F32), start_step=5),
        ValueError,
        r"`class_weights` must be 1-D.*\(3, 1\)",
    ),
    "float_start_step": (
        lambda: DRW(np.ones(3, F32), start_step=2.5),
        TypeError,
        "`start_step` must be a Python int; got float",
    ),
    "negative_start_step": (
        lambda: DRW(np.ones(3, F32), start_step=-1),
        ValueError,
        "`start_step` must be >= 0; got -1",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_naming_the_argument(case):
    call, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        call()


def test_the_schedule_rejects_a_non_scalar_step():
    schedule = jwxent.deferred_reweighting(np.ones(3, np.float32), start_step=1)
    with pytest.raises(ValueError, match=r"`step` must be a scalar; got shape \(2,\)"):
        schedule(np.array([1, 2]))
    with pytest.raises(TypeError, match="`step` must be a real number"):
        schedule(None)
