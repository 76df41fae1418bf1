"""The conformance matrix: every registered loss × modes, transformations, dtypes, edges.

`tests/_registry.py` lists the public losses; every test here is
parametrised over it, so a loss added there is covered by all of them. The
references are `tests/_references.py`'s float64 formulas: in NumPy for values
and finite differences, in plain JAX for Hessians. Both forms of the
derivative core run: the XLA:CPU one and the generic one that the CUDA and
TPU programs use (`_platform.generic_only`).
"""

import contextlib
import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jwxent
from jwxent import _platform
from tests import _registry as registry
from tests._registry import (
    BY_NAME,
    LOSSES,
    REDUCTIONS,
    call,
    call_values,
    case_id,
    cases,
    differentiable,
)
from tests._tolerance import assert_close

SCALAR_REDUCTIONS = REDUCTIONS[1:]
PATHS = ("xla_cpu", "generic")


def _grouped(loss, *values):
    """A parameter set that keeps one loss's tests on one pytest-xdist worker,
    so that they share the compilations cached below."""
    return pytest.param(
        loss,
        *values,
        marks=pytest.mark.xdist_group(loss.name),
        id="-".join([loss.name, *map(str, values)]),
    )


loss_ids = pytest.mark.parametrize("loss", [_grouped(loss) for loss in LOSSES])


def _path(path: str):
    return _platform.generic_only() if path == "generic" else contextlib.nullcontext()


def _random_like(tree, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: rng.standard_normal(np.shape(a)).astype(a.dtype), tree)


def _reduced(loss, values, reduction, **extra):
    """`"none"` as it is, or the scalar reductions stacked, for values `values`."""
    if reduction == "none":
        return call(loss, values, reduction="none", **extra)
    return jnp.stack([call(loss, values, reduction=r, **extra) for r in SCALAR_REDUCTIONS])


def _numpy_reduced(loss, values, reduction):
    args = [values[name] for name in loss.data]
    kwargs = {k: v for k, v in values.items() if k not in loss.data}
    if reduction == "none":
        return loss.reference(*args, **kwargs, reduction="none")
    return np.stack([loss.reference(*args, **kwargs, reduction=r) for r in SCALAR_REDUCTIONS])


# ---------------------------------------------------------------------------
# Values, reverse mode and forward mode, every reduction, both paths.
# ---------------------------------------------------------------------------


def _directional_derivative(loss, values, name, tangent, reduction, step=1e-6):
    """Central finite difference of the NumPy reference along `tangent` of input `name`."""

    def at(sign):
        moved = {**values, name: values[name] + sign * step * tangent}
        return _numpy_reduced(loss, moved, reduction)

    return (at(1.0) - at(-1.0)) / (2 * step)


def _modes(loss, values):
    """Per reduction kind: value, VJP of a random cotangent, JVP along random tangents."""

    def run(floats, tangents):
        out = {}
        for seed, reduction in enumerate(("none", "scalars")):
            f = lambda fl, r=reduction: _reduced(loss, {**values, **fl}, r)
            value, vjp = jax.vjp(f, floats)
            _, jvp = jax.jvp(f, (floats,), (tangents,))
            cotangent = jnp.asarray(_random_like(value, seed))
            out[reduction] = (value, cotangent, vjp(cotangent)[0], jvp)
        return out

    return run


# optax's own tests and `tests/test_optax_compat.py` check these without keywords.
OPTAX_NAMED = {
    "softmax_cross_entropy_with_integer_labels",
    "softmax_cross_entropy",
    "safe_softmax_cross_entropy",
    "poly_loss_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
}
# The losses built on the softmax core, whose passes have a generic and an XLA:CPU form.
ON_THE_CORE = {
    "softmax_cross_entropy_with_integer_labels",
    "softmax_cross_entropy",
    "poly_loss_cross_entropy",
    "softmax_focal_loss",
    "softmax_focal_loss_with_integer_labels",
    "linear_softmax_cross_entropy",
}
MODE_CASES = [
    (case, "xla_cpu") for case in cases() if case[1] != "plain" or case[0].name not in OPTAX_NAMED
] + [(case, "generic") for case in cases("everything", "class_mask") if case[0].name in ON_THE_CORE]


@pytest.mark.parametrize(
    ("case", "path"),
    [
        pytest.param(
            case, path, marks=pytest.mark.xdist_group(case[0].name), id=f"{case_id(case)}-{path}"
        )
        for case, path in MODE_CASES
    ],
)
def test_values_and_derivatives_match_the_reference(case, path):
    """Values against NumPy; derivatives against finite differences of it.

    Each input's VJP is checked on its own (`⟨vjp_i, t_i⟩ = ⟨g, ∂_i f·t_i⟩`),
    so a wrong cotangent of any one input (`class_weights`, probability
    labels, a hyperparameter array) fails; the JVP along all tangents at once.
    """
    loss, variant = case
    with jax.enable_x64(True), _path(path):
        values = call_values(loss, variant, registry.arrays(loss.name))
        names = differentiable(values)
        floats = {n: jnp.asarray(values[n]) for n in names}
        tangents = _random_like({n: values[n] for n in names}, 7)
        ours = jax.jit(_modes(loss, values))(floats, tangents)
    for reduction, (value, cotangent, grads, jvp) in ours.items():
        expected = _numpy_reduced(loss, values, reduction)
        assert_close(value, expected, jnp.float64, 64, err_msg=f"{reduction}: value")
        slopes = {
            n: _directional_derivative(loss, values, n, tangents[n], reduction) for n in names
        }
        np.testing.assert_allclose(
            jvp, sum(slopes.values()), rtol=1e-6, atol=1e-6, err_msg=f"{reduction}: jvp"
        )
        for name in names:
            np.testing.assert_allclose(
                np.sum(np.asarray(grads[name]) * tangents[name]),
                np.sum(np.asarray(cotangent) * slopes[name]),
                rtol=1e-6,
                atol=1e-6,
                err_msg=f"{reduction}: vjp of {name}",
            )


@pytest.mark.parametrize("loss", [_grouped(loss) for loss in LOSSES])
def test_float32_values_match_float64_reference(loss):
    """Every reduction from float32 inputs, within float32 rounding of the reference."""
    values = call_values(loss, "everything", registry.arrays(loss.name))
    single = {
        k: v.astype(np.float32) if k in differentiable(values) else v for k, v in values.items()
    }
    ours = jax.jit(lambda v: {r: _reduced(loss, v, r) for r in ("none", "scalars")})(single)
    for reduction, value in ours.items():
        assert value.dtype == jnp.float32
        assert_close(value, _numpy_reduced(loss, single, reduction), jnp.float32, 64)


# ---------------------------------------------------------------------------
# Second order and the other forward-mode entry points, against plain JAX.
# ---------------------------------------------------------------------------


def _with_traced_hyperparameters(loss, values):
    """`values` with every hyperparameter that may be traced as a float64 array."""
    hyper = {k: np.float64(v) for k, v in loss.hyperparameters.items()}
    return {**values, **{k: np.asarray(v) for k, v in hyper.items()}}


def _derivatives_and_twin(loss_name):
    """(ours, the twin's): gradient, Hessian twice, jacfwd and linearize, float64."""
    loss = BY_NAME[loss_name]
    with jax.enable_x64(True):
        values = call_values(loss, "everything", registry.arrays(loss.name, batch=(3,), classes=4))
        values = _with_traced_hyperparameters(loss, values)
        names = differentiable(values)
        main = loss.data[0]

        def f(floats, reference=False):
            return call(loss, {**values, **floats}, reference=reference, reduction="sum")

        def ours(floats, tangent):
            _, linear = jax.linearize(lambda x: f({**floats, main: x}), floats[main])
            forward = jax.jacfwd(lambda x: f({**floats, main: x}))(floats[main])
            # Reverse over reverse on the main input only: the mixed blocks are
            # the forward-over-reverse Hessian's.
            reverse = jax.jacrev(jax.grad(lambda x: f({**floats, main: x})))(floats[main])
            return jax.grad(f)(floats), jax.hessian(f)(floats), reverse, forward, linear(tangent)

        def theirs(floats, tangent):
            gradient = jax.grad(f)(floats, reference=True)
            hessian = jax.hessian(f)(floats, True)
            main_block = hessian[main][main]
            return gradient, hessian, main_block, gradient[main], jnp.sum(gradient[main] * tangent)

        floats = {n: jnp.asarray(values[n]) for n in names}
        tangent = jnp.asarray(_random_like(values[main], 3))
        return jax.jit(ours)(floats, tangent), jax.jit(theirs)(floats, tangent)


@loss_ids
def test_every_first_and_second_derivative_matches_plain_jax(loss):
    """Gradients and Hessians with respect to every float input at once, traced
    hyperparameters included (`gamma`, `label_smoothing`, `z_loss`, the poly and
    clip `epsilon`, `logit_soft_cap`), against the plain-JAX float64 twin: the
    mixed blocks ∂²ℓ/∂x∂y (probability labels, weights, class weights, offsets,
    a hyperparameter) reach rules that the logits' Hessian does not. Then the
    other forward-mode entry points on the main input."""
    actual, expected = _derivatives_and_twin(loss.name)
    _assert_derivatives_close(actual, expected)


def _assert_derivatives_close(actual, expected):
    """Every leaf of every derivative close to the twin's."""
    labels = ("gradient", "hessian", "jacrev of grad", "jacfwd", "linearize")
    for label, a, e in zip(labels, actual, expected, strict=True):
        flat_a, flat_e = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(e)
        for (where, value), want in zip(flat_a, flat_e, strict=True):
            message = f"{label} {jax.tree_util.keystr(where)}"
            assert_close(value, want, jnp.float64, 64, err_msg=message)


# ---------------------------------------------------------------------------
# Transformations: jit, vmap, checkpoint, scan, no retrace; traced hyperparameters.
# ---------------------------------------------------------------------------


def _float32(values):
    return {
        k: v.astype(np.float32) if k in differentiable(values) else v for k, v in values.items()
    }


def _split(values):
    """`(arrays, static)`: the array arguments (traced) and the Python ones (static)."""
    arrays = {k: v for k, v in values.items() if isinstance(v, np.ndarray | jax.Array)}
    return arrays, tuple(sorted((k, v) for k, v in values.items() if k not in arrays))


def _reduction(loss):
    return "sum" if loss.layout == "elementwise" else "weighted_mean"


def _stack(trees):
    return jax.tree.map(lambda *a: np.stack(a), *trees)


def _assert_trees_close(actual, expected):
    chex.assert_trees_all_close(actual, expected, rtol=2e-5, atol=2e-6)


def _value_and_grads(loss, static, names):
    """`arrays -> (loss, gradients of the named arrays)`, one scalar reduction."""

    def value_and_grads(arrays):
        f = lambda fl: call(loss, {**arrays, **fl, **dict(static)}, reduction=_reduction(loss))
        return jax.value_and_grad(f)({n: arrays[n] for n in names})

    return value_and_grads


@functools.cache
def _evaluator(loss_name, static, names, path="xla_cpu"):
    """A jitted `arrays -> (every reduction, gradients of the scalar ones' sum)`.

    Cached by what it closes over, so that tests with inputs of the same shapes
    share one compilation. `path` is part of the key: `generic_only` is read
    when the function is traced, which `jit`'s own cache does not know.
    """
    loss = BY_NAME[loss_name]

    def run(arrays):
        values = {**arrays, **dict(static)}
        out = {r: call(loss, values, reduction=r) for r in REDUCTIONS}

        def total(floats):
            merged = {**values, **floats}
            return sum(call(loss, merged, reduction=r) for r in SCALAR_REDUCTIONS)

        return out, jax.grad(total)({n: arrays[n] for n in names})

    return jax.jit(run)


def _all_reductions_and_grads(loss, values, path="xla_cpu", names=None):
    """Every reduction and the gradients of `names` (the float NumPy arrays by default)."""
    arrays, static = _split(values)
    names = tuple(differentiable(values) if names is None else names)
    with _path(path):
        return _evaluator(loss.name, static, names, path)(arrays)


@functools.cache
def _compiled_value_and_grads(loss_name, static, names):
    """A jitted `_value_and_grads` that must never retrace (shared by the tests below)."""
    loss = BY_NAME[loss_name]
    return jax.jit(chex.assert_max_traces(_value_and_grads(loss, static, names), n=1))


def _per_class_array(values):
    """The per-class array that a vmap sweeps alone: class weights or their kin."""
    return next(n for n in ("class_weights", "pos_weight", "alpha", "weights") if n in values)


@loss_ids
def test_jit_vmap_checkpoint_scan_and_no_retrace(loss):
    """New values of the same shapes never retrace; vmap over the batch of problems or
    over one per-class array, checkpoint and scan give the jitted loop's numbers."""
    problems = [
        _float32(call_values(loss, "everything", registry.arrays(loss.name, seed=s)))
        for s in range(3)
    ]
    arrays = [_split(p)[0] for p in problems]
    static, names = _split(problems[0])[1], tuple(differentiable(problems[0]))
    value_and_grads = _value_and_grads(loss, static, names)
    chex.clear_trace_counter()
    step = _compiled_value_and_grads(loss.name, static, names)
    looped = [step(a) for a in arrays]
    name = _per_class_array(problems[0])
    swept = [step({**arrays[0], name: a[name]}) for a in arrays]

    def transformed(stacked):
        def body(total, a):
            value, grads = value_and_grads(a)
            return total + value, grads

        scanned = jax.lax.scan(body, jnp.zeros((), jnp.float32), stacked)
        first = jax.tree.map(lambda a: a[0], stacked)
        by_keyword = jax.vmap(lambda k: value_and_grads({**first, name: k}))(stacked[name])
        batched = jax.vmap(value_and_grads)(stacked)
        return batched, by_keyword, jax.checkpoint(value_and_grads)(first), scanned

    batched, by_keyword, remat, (total, grads) = jax.jit(transformed)(_stack(arrays))
    _assert_trees_close(batched, _stack(looped))
    _assert_trees_close(by_keyword, _stack(swept))
    _assert_trees_close(remat, looped[0])
    assert_close(total, sum(v for v, _ in looped), jnp.float32, 64)
    _assert_trees_close(grads, _stack([g for _, g in looped]))


@loss_ids
def test_traced_hyperparameters_equal_python_numbers(loss):
    """Traced under jit and swept by vmap, hyperparameters give a Python number's answer."""
    values = _float32(call_values(loss, "everything", registry.arrays(loss.name)))
    names = tuple(differentiable(values))
    hyper = {k: np.asarray(v, np.float32) for k, v in loss.hyperparameters.items()}
    halves = {k: v / 2 for k, v in hyper.items()}
    numbers = {**values, **{k: float(v) for k, v in hyper.items()}}
    chex.clear_trace_counter()  # the compiled step below may be a new one
    expected = _compiled_value_and_grads(loss.name, _split(numbers)[1], names)(_split(numbers)[0])
    arrays, static = _split({**values, **hyper})
    traced_fn = _value_and_grads(loss, static, names)

    def both(arrays, sweep):
        swept = jax.vmap(lambda h: traced_fn({**arrays, **h}))(sweep)
        return traced_fn(arrays), traced_fn({**arrays, **halves}), swept

    sweep = {k: np.stack([hyper[k], halves[k]]) for k in hyper}
    traced, traced_half, swept = jax.jit(both)(arrays, sweep)
    _assert_trees_close(traced, expected)
    reference = _numpy_reduced(loss, {**values, **halves}, "scalars")
    index = SCALAR_REDUCTIONS.index(_reduction(loss))
    assert_close(traced_half[0], reference[index], jnp.float32, 64)
    _assert_trees_close(swept, _stack([traced, traced_half]))


# ---------------------------------------------------------------------------
# Edge inputs: empty batch, one class, everything masked, zero weights, huge logits.
# ---------------------------------------------------------------------------


def _main_float(loss):
    return loss.data[0]


@loss_ids
def test_empty_batch_gives_zero_and_an_empty_gradient(loss):
    values = _float32(call_values(loss, "everything", registry.arrays(loss.name, batch=(0,))))
    out, grads = _all_reductions_and_grads(loss, values)
    assert out["none"].shape[0] == 0
    for reduction in SCALAR_REDUCTIONS:
        assert float(out[reduction]) == 0.0, reduction
    for name, grad in grads.items():
        assert grad.shape == values[name].shape, name
        assert np.all(np.asarray(grad) == 0), name


@loss_ids
def test_one_class_matches_the_reference(loss):
    values = _float32(call_values(loss, "everything", registry.arrays(loss.name, classes=1)))
    out, grads = _all_reductions_and_grads(loss, values)
    assert_close(out["none"], _numpy_reduced(loss, values, "none"), jnp.float32, 64)
    scalars = jnp.stack([out[r] for r in SCALAR_REDUCTIONS])
    assert_close(scalars, _numpy_reduced(loss, values, "scalars"), jnp.float32, 64)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def _masked_everything(loss, values):
    """Every example masked out through `where` (and labels all ignored if possible)."""
    masked = dict(values)
    masked["where"] = np.zeros(np.shape(values["where"]), bool)
    if "ignore_index" in values:
        masked["labels"] = np.full(np.shape(values["labels"]), registry.IGNORE, np.int32)
    return masked


@loss_ids
def test_everything_masked_or_zero_weights_gives_zero_not_nan(loss):
    values = _float32(call_values(loss, "everything", registry.arrays(loss.name)))
    for case in (_masked_everything(loss, values), {**values, "weights": 0.0 * values["weights"]}):
        out, grads = _all_reductions_and_grads(loss, case)
        assert np.all(np.asarray(out["none"]) == 0)
        for reduction in SCALAR_REDUCTIONS:
            assert float(out[reduction]) == 0.0, reduction
        for name, grad in grads.items():
            if name != "weights":  # the loss does depend on the weights' values
                assert np.all(np.asarray(grad) == 0), name
            assert np.all(np.isfinite(grad)), name


ON_LOGITS = [loss for loss in LOSSES if loss.data[0] in ("logits", "x")]


@pytest.mark.parametrize("loss", [_grouped(loss) for loss in ON_LOGITS])
def test_huge_logits_are_finite_and_exact(loss):
    values = _float32(call_values(loss, "everything", registry.arrays(loss.name)))
    main = _main_float(loss)
    rng = np.random.default_rng(11)
    values[main] = (1e4 * rng.choice([-1.0, 1.0], np.shape(values[main]))).astype(np.float32)
    out, grads = _all_reductions_and_grads(loss, values)
    for reduction in REDUCTIONS:
        assert np.all(np.isfinite(out[reduction])), reduction
    expected = _numpy_reduced(loss, values, "none")
    np.testing.assert_allclose(out["none"], expected, rtol=1e-5, atol=1e-3)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "name", ["softmax_cross_entropy_with_integer_labels", "softmax_cross_entropy"]
)
def test_tied_huge_logits_keep_the_gradient_exact(name, path):
    """`softmax − target` for logits of 1e8: the shift and the log-sum stay apart."""
    logits = np.array([[1e8, 1e8, 0.0], [0.0, -1e8, -1e8]], np.float32)
    labels = np.array([0, 1], np.int32)
    if name == "softmax_cross_entropy":
        labels = np.eye(3, dtype=np.float32)[labels]
    loss = registry.BY_NAME[name]
    with _path(path):
        grad = jax.jit(
            jax.grad(lambda z: call(loss, {"logits": z, "labels": labels}, reduction="sum"))
        )(logits)
    np.testing.assert_array_equal(grad, [[-0.5, 0.5, 0.0], [1.0, -1.0, 0.0]])


MASK_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The CPU path in float32, the generic (CUDA/TPU) one in float32 and bfloat16.
MASK_RUNS = [("xla_cpu", "float32"), ("generic", "float32"), ("generic", "bfloat16")]


def _mask_runs(losses):
    return [
        pytest.param(
            loss,
            path,
            dtype,
            marks=pytest.mark.xdist_group(loss.name),
            id=f"{loss}-{path}-{dtype}",
        )
        for loss in losses
        for path, dtype in MASK_RUNS
        if path == "xla_cpu" or loss.name in ON_THE_CORE
    ]


def _masked_at_minus_infinity(loss, dtype, *, keep_where):
    """The `class_mask` case with masked logits at −inf in `dtype`, as float32 NumPy
    inputs and their float64 rounding. Without `keep_where` the mask is dropped and
    the probability labels are zero (renormalised) on those classes instead."""
    values = _float32(call_values(loss, "class_mask", registry.arrays(loss.name)))
    mask = values["where"]
    if "labels" in values and values["labels"].dtype.kind == "i":
        values["labels"] = np.zeros_like(values["labels"])  # class 0 is never masked
    if loss.data[0] == "logits":
        logits = np.asarray(jnp.asarray(values["logits"], MASK_DTYPES[dtype]), np.float32)
        values["logits"] = np.where(mask, logits, -np.inf).astype(np.float32)
    if not keep_where:
        del values["where"], values["label_smoothing"]  # smoothing would reach −inf classes
        labels = np.where(mask, values["labels"], 0.0)
        values["labels"] = (labels / labels.sum(-1, keepdims=True)).astype(np.float32)
    return values


def _check_masked(loss, values, path, dtype, mask):
    """Finite values equal to the reference's; exactly zero, finite gradients."""
    ours = {**values}
    if loss.data[0] == "logits":
        ours["logits"] = jnp.asarray(values["logits"], MASK_DTYPES[dtype])
    out, grads = _all_reductions_and_grads(loss, ours, path, differentiable(values))
    for reduction in REDUCTIONS:
        assert np.all(np.isfinite(out[reduction])), reduction
    # The inputs are exact in float32: only float32 rounding separates the two.
    assert_close(out["none"], _numpy_reduced(loss, values, "none"), jnp.float32, 64)
    if loss.data[0] == "logits":
        np.testing.assert_array_equal(np.asarray(grads["logits"], np.float32)[~mask], 0.0)
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads.values())


@pytest.mark.parametrize(
    ("loss", "path", "dtype"),
    _mask_runs([loss for loss in LOSSES if "class_mask" in loss.variants]),
)
def test_masked_classes_at_minus_infinity_have_zero_gradient(loss, path, dtype):
    """A logits-shaped `where` with −inf logits on the masked classes, on both paths."""
    values = _masked_at_minus_infinity(loss, dtype, keep_where=True)
    _check_masked(loss, values, path, dtype, values["where"])


PROBABILITY_LABELS = [
    BY_NAME[n] for n in ("softmax_cross_entropy", "poly_loss_cross_entropy", "softmax_focal_loss")
]


@pytest.mark.parametrize(("loss", "path", "dtype"), _mask_runs(PROBABILITY_LABELS))
def test_minus_infinity_logits_with_zero_targets_count_as_zero(loss, path, dtype):
    """−inf logits where the probability labels are 0 and no `where`: `0·(−inf)` is 0
    (optax's `safe_softmax_cross_entropy`), on both paths."""
    mask = call_values(loss, "class_mask", registry.arrays(loss.name))["where"]
    values = _masked_at_minus_infinity(loss, dtype, keep_where=False)
    _check_masked(loss, values, path, dtype, mask)


# ---------------------------------------------------------------------------
# Dtypes: half precision in float32, integer label dtypes.
# ---------------------------------------------------------------------------

HALF = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}
_EPS = {"bfloat16": 2.0**-7, "float16": 2.0**-10}


HALF_RUNS = [
    pytest.param(
        loss, dtype, path, marks=pytest.mark.xdist_group(loss.name), id=f"{loss}-{dtype}-{path}"
    )
    for loss in LOSSES
    for dtype in HALF
    for path in PATHS
    if path == "xla_cpu" or (loss.name in ON_THE_CORE and dtype == "bfloat16")
]


@pytest.mark.parametrize(("loss", "dtype", "path"), HALF_RUNS)
def test_half_precision_inputs_are_computed_in_float32(loss, dtype, path):
    """Half-precision data: the loss within float32 rounding of the reference on the
    rounded inputs (and, for the fused loss's GPU/TPU plan, the rounded logits),
    the gradient in the input dtype within two of its ulps of max |g|. A pass
    that computed probabilities, the log-sum-exp (of the logit-adjusted logits)
    or the label's term in half precision fails both, on the CPU path and on the
    generic one.
    """
    values = _float32(call_values(loss, "everything", registry.arrays(loss.name, seed=3)))
    main = _main_float(loss)
    scale = 3.0 if main == "logits" else 1.0
    halves = [n for n in (main, "w") if n in values]
    half_values = {**values, **{n: jnp.asarray(values[n] * scale, HALF[dtype]) for n in halves}}
    if main == "x":
        # On grids whose every `x @ w` is exact in half precision: the logits
        # then do not depend on the matmul's summation order or output dtype.
        half_values["x"] = jnp.asarray(np.round(values["x"] * 2) / 2, HALF[dtype])
        half_values["w"] = jnp.asarray(np.round(values["w"] * 4) / 4, HALF[dtype])
        half_values["bias"] = jnp.asarray(np.round(values["bias"] * 8) / 8, jnp.float32)
    if main == "logits":
        half_values["logits"] = _untied(half_values["logits"])
    rounded = {k: np.asarray(v, np.float64) if k in halves else v for k, v in half_values.items()}

    def f(x):
        return call(loss, {**half_values, main: x}, reduction="sum")

    with _path(path):
        value, grad = jax.jit(jax.value_and_grad(f))(half_values[main])
    assert value.dtype == jnp.float32 and grad.dtype == half_values[main].dtype
    # The inputs are exact in float64: only float32 rounding separates the two.
    reference = _numpy_reduced(loss, rounded, "scalars")
    reference = reference[SCALAR_REDUCTIONS.index("sum")]
    np.testing.assert_allclose(value, reference, rtol=1e-5)
    expected = _numpy_gradient(loss, rounded, main, "sum")
    error = np.max(np.abs(np.asarray(grad, np.float64) - expected))
    assert error <= 2 * _EPS[dtype] * np.max(np.abs(expected)), (error, np.max(np.abs(expected)))


def _untied(logits):
    """Half-precision logits whose row maxima are unique: a cost matrix's `argmax`
    is discontinuous at a tie, which finite differences would turn into 1e6."""
    z = np.asarray(logits, np.float64)
    top = np.argmax(z, axis=-1)[..., None]
    peak = np.take_along_axis(z, top, axis=-1)
    ties = np.sum(z == peak, axis=-1, keepdims=True) > 1
    bumped = jnp.nextafter(jnp.asarray(peak, logits.dtype), jnp.inf)
    raised = np.where(ties, np.asarray(bumped, np.float64), peak)
    np.put_along_axis(z, top, raised, axis=-1)
    return jnp.asarray(z, logits.dtype)


def _numpy_gradient(loss, values, name, reduction, step=1e-6):
    """The gradient of the NumPy reference with respect to `name`, by central differences."""
    x = np.asarray(values[name], np.float64)
    index = SCALAR_REDUCTIONS.index(reduction)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        moved = x.copy()
        moved[i] += step
        ahead = _numpy_reduced(loss, {**values, name: moved}, "scalars")[index]
        moved[i] -= 2 * step
        behind = _numpy_reduced(loss, {**values, name: moved}, "scalars")[index]
        grad[i] = (ahead - behind) / (2 * step)
    return grad


INTEGER_LABELS = [
    loss
    for loss in LOSSES
    if "ignore_index" in loss.variants or loss.name.endswith("integer_labels")
]


@pytest.mark.parametrize("loss", [_grouped(loss) for loss in INTEGER_LABELS])
def test_every_integer_label_dtype_gives_the_same_loss(loss):
    values = _float32(call_values(loss, "plain", registry.arrays(loss.name)))
    f = jax.jit(lambda v: call(loss, v, reduction="none"))
    expected = f(values)
    for dtype in (np.int8, np.uint8, np.int16, np.uint32):
        np.testing.assert_array_equal(
            f({**values, "labels": values["labels"].astype(dtype)}), expected
        )
    with jax.enable_x64(True):
        wide = jax.jit(lambda v: call(loss, v, reduction="none"))(
            {**values, "labels": values["labels"].astype(np.int64)}
        )
    np.testing.assert_array_equal(wide, expected)


@pytest.mark.parametrize("loss", [_grouped(loss) for loss in INTEGER_LABELS])
@pytest.mark.parametrize("bad", ["num_classes", "-1"])
def test_out_of_range_labels_raise_eagerly_and_give_nan_under_jit(loss, bad):
    values = _float32(call_values(loss, "plain", registry.arrays(loss.name, batch=(4,))))
    classes = registry.arrays(loss.name, batch=(4,))["class_weights"].shape[0]
    label = classes if bad == "num_classes" else -1
    labels = values["labels"].copy()
    labels[2] = label
    broken = {**values, "labels": labels}
    with pytest.raises(
        ValueError, match=rf"`labels` must be in \[0, {classes}\).*got {label} at index \(2,\)"
    ):
        call(loss, broken, reduction="none")
    out = jax.jit(lambda v: call(loss, v, reduction="none"))(broken)
    assert np.isnan(out[2])
    good = jax.jit(lambda v: call(loss, v, reduction="none"))(values)
    np.testing.assert_array_equal(np.delete(np.asarray(out), 2), np.delete(np.asarray(good), 2))


LONG_ROWS = [(50257, "xla_cpu"), (32771, "xla_cpu"), (4099, "generic"), (16400, "generic")]
ON_THE_PASSES = [
    "softmax_cross_entropy_with_integer_labels",
    "softmax_cross_entropy",
    "poly_loss_cross_entropy",
]
# The focal losses' own pass has no XLA:CPU pieces, only the generic forms' cut rows.
WITH_FOCAL_SUMS = ["softmax_focal_loss", "softmax_focal_loss_with_integer_labels"]


@pytest.mark.parametrize(
    ("name", "classes", "path"),
    [(name, *rows) for name in ON_THE_PASSES for rows in LONG_ROWS]
    + [(name, *rows) for name in WITH_FOCAL_SUMS for rows in LONG_ROWS if rows[1] == "generic"],
)
def test_rows_longer_than_a_library_piece(name, classes, path):
    """Past 32768 classes XLA:CPU sums rows in pieces (the log-sum-exp and, for
    probability labels, the target dot and `Σ t·p`): 50257 = 29 pieces, 32771
    is prime. The generic forms reduce rows longer than 4096 classes in one
    variadic pass (and the target dots in a second), where shorter rows take a
    max and a sum: 4099 is prime and past both bounds. The GPU form cuts rows
    past 16384 classes in 16 pieces and takes the float32 dots along: 16400 =
    16 x 1025. The focal sums (with smoothing, also of integer labels) and
    the label weight `Σ c·q` are one variadic reduction there, cut the same
    way."""
    loss = registry.BY_NAME[name]
    rng = np.random.default_rng(5)
    # Off-centre logits: a wrong target dot no longer cancels the log-sum-exp's shift.
    logits = (3.0 * rng.standard_normal((3, classes)) + 10.0).astype(np.float32)
    labels = rng.integers(0, classes, 3).astype(np.int32)
    if not name.endswith("_with_integer_labels"):
        # Half of each row's mass on its largest logit, so that `Σ t·p` is not ~1/C.
        top = np.zeros_like(logits)  # not `np.eye(classes)[...]`: 10 GB at 50257 classes
        top[np.arange(len(top)), np.argmax(logits, axis=-1)] = 1.0
        labels = (0.5 * rng.dirichlet(np.ones(classes), 3) + 0.5 * top).astype(np.float32)
    values = {
        "logits": logits,
        "labels": labels,
        "class_weights": rng.uniform(0.2, 3.0, classes).astype(np.float32),
        "logit_adjustment": rng.normal(0.0, 1.0, classes).astype(np.float32),
        "label_smoothing": 0.1,
    }
    out, grads = _all_reductions_and_grads(loss, values, path)
    assert_close(out["none"], _numpy_reduced(loss, values, "none"), jnp.float32, classes)
    with jax.enable_x64(True):
        f64 = {k: np.asarray(v, np.float64) if k in grads else v for k, v in values.items()}
        expected = jax.grad(
            lambda z: sum(
                call(loss, {**f64, "logits": z}, reference=True, reduction=r)
                for r in SCALAR_REDUCTIONS
            )
        )(jnp.asarray(f64["logits"]))
        expected = np.asarray(expected)
    assert_close(grads["logits"], expected, jnp.float32, classes)


# ---------------------------------------------------------------------------
# LDAM's scale and the precision of one-hot probability labels, both paths.
# ---------------------------------------------------------------------------

# Every softmax-family loss on logits (the fused one through `x`).
SOFTMAX_FAMILY = [loss for loss in LOSSES if loss.layout in ("softmax", "fused")]
SOFTMAX_FAMILY = [loss for loss in SOFTMAX_FAMILY if loss.data[0] in ("logits", "x")]


def _path_runs(losses):
    return [
        pytest.param(loss, path, marks=pytest.mark.xdist_group(loss.name), id=f"{loss}-{path}")
        for loss in losses
        for path in PATHS
        if path == "xla_cpu" or loss.name in ON_THE_CORE
    ]


def _at_ldam_scale(loss):
    """float32 "everything" inputs without z-loss (not shift-invariant) or a soft cap,
    at LDAM's scale: s = 30 logits (cosines times 30) and margins up to 15."""
    values = _float32(call_values(loss, "everything", registry.arrays(loss.name, seed=4)))
    for name in ("z_loss", "logit_soft_cap"):
        values.pop(name, None)
    rng = np.random.default_rng(4)
    if loss.data[0] == "logits":
        logits = 30.0 * rng.uniform(-1.0, 1.0, values["logits"].shape)
        if values["labels"].dtype.kind == "i":
            # The label's logit far ahead (p_y ≈ 1 before its margin): a margin
            # applied as a correction to the plain softmax cancels there.
            hits = np.arange(logits.shape[-1]) == values["labels"][..., None]
            logits = np.where(hits, 45.0, logits)
        values["logits"] = logits.astype(np.float32)
    else:
        values["w"] = (10.0 * values["w"]).astype(np.float32)
    if "label_margins" in values:
        values["label_margins"] = (15.0 * values["label_margins"]).astype(np.float32)
    return values


def _float64_gradient(loss, values, name):
    """∂(sum)/∂`name` of the plain-JAX float64 twin."""
    with jax.enable_x64(True):
        f64 = {
            k: np.asarray(v, np.float64) if k in differentiable(values) else v
            for k, v in values.items()
        }
        f = lambda a: call(loss, {**f64, name: a}, reference=True, reduction="sum")
        return np.asarray(jax.grad(f)(jnp.asarray(f64[name])))


@functools.cache
def _sum_and_grad(loss_name, static, path):
    """A jitted `arrays -> (sum, its gradient w.r.t. the main input)` for one path."""
    loss = BY_NAME[loss_name]
    main = loss.data[0]

    def f(arrays):
        g = lambda x: call(loss, {**arrays, main: x, **dict(static)}, reduction="sum")
        return jax.value_and_grad(g)(arrays[main])

    return jax.jit(f)


def _ours_sum_and_grad(loss, values, path):
    arrays, static = _split(values)
    with _path(path):
        return _sum_and_grad(loss.name, static, path)(arrays)


def _assert_rows_sum_to_zero(grad, classes_axis_sum):
    """Each row's gradient sums to 0 over the classes, within float32 rounding of
    its magnitude (the terms it adds up)."""
    scale = np.sum(np.abs(grad), axis=-1)
    tolerance = 8 * grad.shape[-1] * 2.0**-23 * scale + 1e-30
    assert np.all(np.abs(classes_axis_sum) <= tolerance), (classes_axis_sum, tolerance)


@pytest.mark.parametrize(("loss", "path"), _path_runs(SOFTMAX_FAMILY))
def test_ldam_scale_matches_float64_and_gradients_sum_to_zero(loss, path):
    """At s = 30 with margins up to 15 the value and the gradient match the float64
    reference to float32 precision, and the logits' gradient of every row sums to
    zero over the classes (the loss is invariant to a shift of the row)."""
    values = _at_ldam_scale(loss)
    value, grad = _ours_sum_and_grad(loss, values, path)
    expected = _numpy_reduced(loss, values, "scalars")[SCALAR_REDUCTIONS.index("sum")]
    assert_close(value, expected, jnp.float32, 64)
    main = loss.data[0]
    expected_grad = _float64_gradient(loss, values, main)
    grad = np.asarray(grad, np.float64)
    assert_close(
        grad / np.max(np.abs(expected_grad)),
        expected_grad / np.max(np.abs(expected_grad)),
        jnp.float32,
        64,
    )
    if main == "logits":
        _assert_rows_sum_to_zero(grad, np.sum(grad, axis=-1))
    else:  # the logits' gradient is ∂/∂z, and ∂/∂x = ∂/∂z · wᵀ: sum through w's columns
        w = values["w"].astype(np.float64)
        dz = grad @ np.linalg.pinv(w.T)  # w.T has full row rank: hidden ≥ classes
        _assert_rows_sum_to_zero(dz, np.sum(dz, axis=-1))


@pytest.mark.parametrize("path", PATHS)
def test_the_ldam_example_of_issue_19(path):
    """logits 30·[−0.314, 1.458, 1.960], label 2, margins [0, 0, 15]: the gradient of the
    cross-entropy is [4.0e-24, p, −p] with p = σ(−0.06) = 0.4850 in float64 (the
    broken rule gave [4.3e-24, 0.5255, −0.5000])."""
    loss = BY_NAME["softmax_cross_entropy_with_integer_labels"]
    values = {
        "logits": (30.0 * np.array([[-0.314, 1.458, 1.960]])).astype(np.float32),
        "labels": np.array([2], np.int32),
        "label_margins": np.array([0.0, 0.0, 15.0], np.float32),
    }
    _, grad = _ours_sum_and_grad(loss, values, path)
    expected = _float64_gradient(loss, values, "logits")
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose(np.sum(grad), 0.0, atol=1e-6)


# One-hot rows whose label logit is the largest, at 10 to 100: the loss is e^(−gap).
PRECISE_ROWS = np.array(
    [[10.0, 0.0, 0.0], [30.0, 20.0, 19.0], [60.0, 52.0, 50.0], [100.0, 91.0, 89.0]]
)
PRECISE_PAIRS = [
    ("softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"),
    ("safe_softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"),
    ("softmax_focal_loss", "softmax_focal_loss_with_integer_labels"),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("name", "integer_name"), PRECISE_PAIRS, ids=[p[0] for p in PRECISE_PAIRS])
def test_one_hot_probability_labels_are_as_precise_as_integer_labels(name, integer_name, path):
    """`softmax_cross_entropy([[10., 0, 0]], [[1., 0, 0]])` is 9.0796e-05; folding the
    shift into `lse·Σq − Σq·z` gave 9.0599e-05 (2e-3 off). The probability-label loss
    must be as close to float64 as the integer-label one, within a few ulps."""
    logits = PRECISE_ROWS.astype(np.float32)
    labels = np.argmax(logits, axis=-1).astype(np.int32)
    one_hot = np.eye(3, dtype=np.float32)[labels]
    with _path(path):
        soft = np.asarray(jax.jit(BY_NAME[name].fn)(logits, one_hot), np.float64)
        hard = np.asarray(jax.jit(BY_NAME[integer_name].fn)(logits, labels), np.float64)
    exact = BY_NAME[integer_name].reference(logits.astype(np.float64), labels)
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    np.testing.assert_array_less(np.abs(soft - exact), np.abs(hard - exact) + 4 * ulp)


# ---------------------------------------------------------------------------
# Programs: the CUDA and TPU lowerings; what reverse mode keeps.
# ---------------------------------------------------------------------------


# The backward pass of the focal sums reads the logits under its own name, so that
# XLA recomputes `t·h'` there instead of keeping the forward pass's as a
# `[batch, classes]` buffer (`_softmax/_focal.py`): its one barrier is on purpose.
BACKWARD_APART = {"softmax_focal_loss", "softmax_focal_loss_with_integer_labels"}


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@loss_ids
def test_accelerator_programs_have_no_conditional_or_barrier(loss, platform):
    """No XLA:CPU workaround reaches a GPU or TPU program: no barrier (but the focal
    sums' own) and no `case` or `if` that chooses at run time."""
    values = _float32(call_values(loss, "everything", registry.arrays(loss.name)))
    names = differentiable(values)
    f = jax.value_and_grad(lambda fl: call(loss, {**values, **fl}, reduction=_reduction(loss)))
    text = (
        jax.jit(f)
        .trace({n: values[n] for n in names})
        .lower(lowering_platforms=(platform,))
        .as_text()
    )
    barriers = text.count("stablehlo.optimization_barrier")
    assert barriers == 0 or (loss.name in BACKWARD_APART and barriers == 1), barriers
    assert "stablehlo.if" not in text
    assert not _runtime_cases(text)


def _runtime_cases(text: str) -> list[str]:
    """The `stablehlo.case` ops of a lowered program that choose at run time.

    Lowered for one platform, `lax.platform_dependent` leaves two kinds of
    `case`, both of which XLA folds away before compiling: the platform index
    (every branch returns a constant) and the selection itself (one branch
    left, the others pruned). A `lax.cond` has two branches that compute.
    """
    lines, found = text.splitlines(), []
    for i, line in enumerate(lines):
        if '"stablehlo.case"' not in line:
            continue
        indent = line[: len(line) - len(line.lstrip())]
        body, branches = [], 1
        for inner in lines[i + 1 :]:
            if inner.startswith(indent + "})"):
                break
            if inner == indent + "}, {":
                branches += 1
            else:
                body.append(inner.strip())
        constant = all(re.match(r"(%\S+ = stablehlo.constant|stablehlo.return)", b) for b in body)
        if branches > 1 and not constant:
            found.append(line.strip())
    return found


def test_the_cpu_program_has_its_workarounds_and_generic_only_removes_them():
    loss = registry.BY_NAME["softmax_cross_entropy_with_integer_labels"]
    values = _float32(call_values(loss, "plain", registry.arrays(loss.name)))
    f = lambda z: call(loss, {**values, "logits": z}, reduction="sum")
    # Lowered for the CPU on any machine (a GPU's default program has only its own form).
    cpu = ("cpu",)
    text = jax.jit(jax.grad(f)).trace(values["logits"]).lower(lowering_platforms=cpu).as_text()
    assert "optimization_barrier" in text
    with _platform.generic_only():
        traced = jax.jit(jax.grad(lambda z: f(z))).trace(values["logits"])
        generic = traced.lower(lowering_platforms=cpu).as_text()
    assert "optimization_barrier" not in generic


@pytest.mark.parametrize(
    "loss", [BY_NAME[n] for n in sorted(ON_THE_CORE - {"linear_softmax_cross_entropy"})], ids=str
)
def test_reverse_mode_keeps_no_batch_by_classes_float32_array(loss):
    """`jax.vjp` without `jit`, bf16 logits: no float32 probability or copy is kept."""
    values = _float32(
        call_values(loss, "everything", registry.arrays(loss.name, batch=(16,), classes=24))
    )
    logits = jnp.asarray(values["logits"], jnp.bfloat16)
    inputs = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in values.items()}
    _, pullback = jax.vjp(lambda z: call(loss, {**inputs, "logits": z}, reduction="sum"), logits)

    def wide(arrays):
        """The float32 or bool arrays with as many elements as the logits."""
        return [
            f"{a.dtype}{list(np.shape(a))}"
            for a in arrays
            if np.size(a) == logits.size and a.dtype in (jnp.float32, jnp.bool_)
        ]

    # Only the inputs themselves (float32 probability labels) may be kept.
    given = wide(v for v in inputs.values() if isinstance(v, jax.Array))
    kept = wide(jax.tree.leaves(pullback))
    assert len(kept) <= len(given), (kept, given)


def test_the_fused_loss_accumulates_half_precision_matmuls_in_float32():
    """XLA:CPU may keep excess precision, so a bf16 product could pass numerically: the
    program itself must ask for float32 results of every half-precision matmul."""
    loss = BY_NAME["linear_softmax_cross_entropy"]
    values = _float32(call_values(loss, "everything", registry.arrays(loss.name)))
    x, w = (jnp.asarray(values[n], jnp.bfloat16) for n in ("x", "w"))
    f = jax.value_and_grad(
        lambda x, w: call(loss, {**values, "x": x, "w": w}, reduction="mean"), argnums=(0, 1)
    )
    products = list(_equations(jax.make_jaxpr(f)(x, w).jaxpr, "dot_general"))
    assert products
    for eqn in products:
        operands = {v.aval.dtype for v in eqn.invars}
        if jnp.dtype(jnp.bfloat16) in operands:
            assert eqn.params["preferred_element_type"] == jnp.float32, eqn


def _equations(jaxpr, primitive):
    """Every equation of `primitive` in `jaxpr` and the jaxprs nested in it."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == primitive:
            yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner, primitive)


def _reductions_fused_after(hlo: str) -> list[str]:
    """XLA:CPU library fusions (`__ynn_fusion`) computing a reduction followed by
    anything but a convert: a second reduction, a loss's per-row arithmetic."""
    computations = {b.split(" (")[0].strip(): b for b in re.split(r"\n(?=%\S+ \()", hlo)}
    found = []
    for called in re.findall(r"calls=(%[\w.]+)[^\n]*__ynn_fusion", hlo):
        body = computations[called]
        reduces = len(re.findall(r"= \S+ reduce\(", body))
        root = re.search(r"ROOT %\S+ = \S+ ([\w-]+)\(", body)
        if reduces > 1 or (reduces and root and root.group(1) not in ("reduce", "convert")):
            found.append(body)
    return found


@pytest.mark.parametrize("weighted", [True, False], ids=["class_weights", "unweighted"])
@pytest.mark.parametrize("name", ["softmax_cross_entropy", "poly_loss_cross_entropy"])
def test_cpu_row_reductions_end_their_library_fusions(name, weighted):
    """XLA:CPU's library row reduction runs ~6x slower with anything fused after it
    (see `_platform.row_result`). Compiled from shapes at 8192 x 1000, where XLA
    forms those fusions, for the loss and its `value_and_grad` (compiled for the
    CPU on any machine)."""
    batch, classes = 8192, 1000
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    z = jax.ShapeDtypeStruct((batch, classes), jnp.float32, sharding=cpu)
    q = jax.ShapeDtypeStruct((batch, classes), jnp.float32, sharding=cpu)
    cw = jax.ShapeDtypeStruct((classes,), jnp.float32, sharding=cpu)
    options = {"label_smoothing": 0.1, "reduction": "weighted_mean"}
    if name == "softmax_cross_entropy":
        options["z_loss"] = 1e-4
    fn = getattr(jwxent, name)
    loss = lambda z, q, cw: fn(z, q, class_weights=cw if weighted else None, **options)
    for program in (loss, jax.value_and_grad(loss)):
        hlo = jax.jit(program).lower(z, q, cw).compile().as_text()
        assert not _reductions_fused_after(hlo)
