"""Fused linear + softmax cross-entropy: the unfused loss in float64, memory, errors."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jwxent
from jwxent import _platform
from jwxent._fused_linear import _chunks
from tests import _references as ref
from tests._tolerance import assert_close

REDUCTIONS = ["none", "sum", "mean", "weighted_mean", "sum_by_nonzero_weights"]
IGNORE = -100
BATCH, HIDDEN = (3, 4), 5


def make_inputs(vocab=37, seed=0, dtype=np.float64, batch=BATCH, hidden=HIDDEN):
    """Features, projection, labels (some ignored), weights, masks and class weights."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, vocab, size=batch)
    ignored = rng.random(batch) < 0.25
    return {
        "x": rng.standard_normal(batch + (hidden,)).astype(dtype),
        "w": (2 * rng.standard_normal((hidden, vocab))).astype(dtype),
        "bias": rng.standard_normal(vocab).astype(dtype),
        "labels": labels.astype(np.int32),
        "labels_with_ignored": np.where(ignored, IGNORE, labels).astype(np.int32),
        "weights": rng.uniform(0.0, 2.0, size=batch).astype(dtype),
        "where": rng.random(batch) < 0.7,
        "class_weights": rng.uniform(0.1, 3.0, size=vocab).astype(dtype),
    }


# Each case maps the inputs to (labels key, keyword arguments).
CASES = {
    "plain": lambda d: ("labels", {}),
    "weights": lambda d: ("labels", {"weights": d["weights"]}),
    "class_weights": lambda d: ("labels", {"class_weights": d["class_weights"]}),
    "ignore_index": lambda d: ("labels_with_ignored", {"ignore_index": IGNORE}),
    "where": lambda d: ("labels", {"where": d["where"]}),
    "label_smoothing": lambda d: ("labels", {"label_smoothing": 0.1}),
    "smoothing_class_weights": lambda d: (
        "labels",
        {"label_smoothing": 0.2, "class_weights": d["class_weights"]},
    ),
    "z_loss": lambda d: ("labels", {"z_loss": 1e-2, "class_weights": d["class_weights"]}),
    "logit_soft_cap": lambda d: ("labels", {"logit_soft_cap": 3.0, "bias": d["bias"]}),
    "everything": lambda d: (
        "labels_with_ignored",
        {
            "bias": d["bias"],
            "weights": d["weights"],
            "class_weights": d["class_weights"],
            "ignore_index": IGNORE,
            "where": d["where"],
            "label_smoothing": 0.1,
            "z_loss": 1e-3,
            "logit_soft_cap": 4.0,
        },
    ),
}
DIFFERENTIABLE = ("x", "w", "bias", "weights", "class_weights")


def _split(kwargs, d):
    """Differentiable float arguments (x, w and float keywords) and the static rest."""
    floats = {"x": jnp.asarray(d["x"]), "w": jnp.asarray(d["w"])}
    static = {}
    for name, value in kwargs.items():
        if name in DIFFERENTIABLE:
            floats[name] = jnp.asarray(value)
        else:
            static[name] = value
    return floats, static


def _loss(labels, static, reduction, implementation, **options):
    """Loss of the float arguments: the fused one, or the plain-JAX twin."""

    def loss(floats):
        x, w = floats["x"], floats["w"]
        rest = {k: v for k, v in floats.items() if k not in ("x", "w")}
        kwargs = {**rest, **static, "reduction": reduction}
        if implementation == "twin":
            with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
                return ref.linear_softmax_cross_entropy(x, w, labels, xp=jnp, **kwargs)
        return jwxent.linear_softmax_cross_entropy(
            x, w, labels, implementation=implementation, **kwargs, **options
        )

    return loss


def _assert_values_and_grads(d, label_key, kwargs, reductions, implementation=None, **options):
    """Fused values and every cotangent against NumPy and the autodiff twin, float64.

    One jitted program per call computes every reduction, fused and twin, with
    a fixed random output cotangent (so `"none"` checks every row's cotangent).
    """
    floats, static = _split(kwargs, d)
    labels = jnp.asarray(d[label_key])
    rng = np.random.default_rng(1)
    cotangents = {r: rng.standard_normal(() if r != "none" else labels.shape) for r in reductions}

    @jax.jit
    def run(floats, cotangents):
        results = {}
        for reduction in reductions:
            for kind in ("fused", "twin"):
                impl = "twin" if kind == "twin" else implementation
                fn = _loss(labels, static, reduction, impl, **options)
                out, vjp = jax.vjp(fn, floats)
                results[kind, reduction] = (out, vjp(cotangents[reduction])[0])
        return results

    results = run(floats, cotangents)
    terms = d["w"].size
    for reduction in reductions:
        (out, grads), (twin_out, twin_grads) = (
            results["fused", reduction],
            results["twin", reduction],
        )
        expected = ref.linear_softmax_cross_entropy(
            d["x"], d["w"], d[label_key], reduction=reduction, **kwargs
        )
        assert out.dtype == jnp.float64
        assert out.shape == np.shape(expected)
        assert_close(out, expected, jnp.float64, terms, err_msg=reduction)
        assert_close(out, twin_out, jnp.float64, terms, err_msg=reduction)
        for name in floats:
            assert grads[name].dtype == floats[name].dtype
            message = f"{reduction}: d{name}"
            assert_close(grads[name], twin_grads[name], jnp.float64, terms, err_msg=message)


# ---------------------------------------------------------------------------
# Values and gradients against the unfused loss, float64.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vocab", "chunk_size"),
    [(40, 8), (37, 1), (37, 36), (37, 100), (37, None)],
)
def test_every_block_layout_matches(vocab, chunk_size):
    with jax.enable_x64(True):
        d = make_inputs(vocab=vocab, seed=vocab)
        label_key, kwargs = CASES["everything"](d)
        reductions = ["none", "weighted_mean"]
        _assert_values_and_grads(d, label_key, kwargs, reductions, chunk_size=chunk_size)


@pytest.mark.parametrize("path", ["xla_cpu", "generic"])
def test_hidden_size_with_a_short_last_weight_block(path):
    """Hidden 20 in 8 blocks of rows is 6 blocks of 3 and one of 2 (rows 18-19 of `dw`):
    the XLA:CPU form must not drop the short block. The generic (GPU/TPU) form, which
    adds whole products, runs the same case."""
    context = _platform.generic_only() if path == "generic" else jax.enable_x64(True)
    with jax.enable_x64(True), context:
        d = make_inputs(vocab=29, seed=20, hidden=20)
        label_key, kwargs = CASES["everything"](d)
        _assert_values_and_grads(d, label_key, kwargs, ["mean"], chunk_size=5)


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_generic_path_matches_in_float64(platform):
    """The GPU and TPU plans (`accelerator_plan`: `gpu_chunks` or `tpu_chunks` chunks;
    the weight gradient accumulated in `w`'s dtype) on every keyword, in float64."""
    with jax.enable_x64(True), _platform.generic_only(platform):
        d = make_inputs(vocab=41, seed=5, batch=(8, 16))
        label_key, kwargs = CASES["everything"](d)
        _assert_values_and_grads(d, label_key, kwargs, ["sum", "weighted_mean"])


@pytest.mark.parametrize(
    ("tokens", "dtype", "gpu", "tpu"),
    [
        # (tokens, inputs' dtype, GPU chunks x tokens, TPU chunks x tokens)
        (8192, jnp.bfloat16, (8, 1024), (24, 344)),
        (8192, jnp.float32, (8, 1024), (16, 512)),
        (32768, jnp.bfloat16, (8, 4096), (32, 1024)),  # TPU chunks of at most 1024 tokens
        (32776, jnp.float32, (9, 3648), (33, 1000)),  # GPU chunks of at most 4096 tokens
        (100, jnp.bfloat16, (7, 16), (13, 8)),  # multiples of 8 tokens, the last one short
    ],
)
def test_accelerator_plans(tokens, dtype, gpu, tpu):
    """GPU: 8 chunks of at most `GPU_MAX_CHUNK` tokens; TPU: 16 (float32) or 24
    (half precision) chunks of at most `TPU_MAX_CHUNK` tokens; chunks of a
    multiple of 8 tokens that cover them all."""
    for expected, num_chunks in [
        (gpu, _chunks.gpu_chunks(tokens)),
        (tpu, _chunks.tpu_chunks(tokens, dtype)),
    ]:
        plan = _chunks.accelerator_plan(tokens, None, num_chunks)
        assert (plan.num_chunks, plan.chunk) == expected
        assert plan.chunk % 8 == 0 and 0 <= plan.padding < plan.chunk


def test_the_accelerator_plan_computes_on_half_precision_logits():
    """docs/semantics.md: on GPUs and TPUs the loss of bf16 `x`, `w` is the
    unfused loss on `bf16(x @ w)`, not on float32 logits. The two references
    differ by ~5e-5 here; the loss matches the first to float32 rounding. Run on
    the CPU device on any host (a GPU matmul may round a tie the other way)."""
    cpu = jax.devices("cpu")[0]
    rng = np.random.default_rng(3)
    x = jax.device_put(jnp.asarray(rng.standard_normal((64, 32)), jnp.bfloat16), cpu)
    w = jax.device_put(jnp.asarray(rng.standard_normal((32, 300)) / 4, jnp.bfloat16), cpu)
    labels = rng.integers(0, 300, 64)

    def loss(x, w):
        return jwxent.linear_softmax_cross_entropy(x, w, labels, reduction="sum")

    with _platform.generic_only():
        value = float(jax.jit(loss)(x, w))
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    stored = ref.linear_softmax_cross_entropy(x64, w64, labels, stored_dtype=jnp.bfloat16).sum()
    exact = ref.linear_softmax_cross_entropy(x64, w64, labels).sum()
    assert abs(value - stored) <= 1.5e-5 * stored
    assert abs(exact - stored) >= 3e-5 * stored  # the check can tell the two apart


def test_half_precision_weight_gradient_rounds_once_per_chunk():
    """On GPUs the bf16 weight gradient is the accumulator (it lives in the output
    buffer): each of the `GPU_CHUNKS` chunks adds a float32 product and rounds once,
    and the chunk's logits are stored in bf16, as `x @ w` would be.

    Bound, elementwise, against float64 on the same bf16 inputs, with u = 2^-8 the
    unit roundoff of bf16 and S = |x|ᵀ|dz| (which bounds every partial sum): the
    n roundings of the accumulator and the rounding of `dz` to bf16 before the
    product each cost at most u·S, so (n + 2)·u·S; rounding a row's logits (at
    most M in size) moves each probability by at most 2·u·M·p, which adds
    2·u·|x|ᵀ(M·p). The test also checks that the bound is not loose by orders
    of magnitude.
    """
    tokens, hidden, vocab = 512, 32, 300
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.standard_normal((tokens, hidden)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((hidden, vocab)) / np.sqrt(hidden), jnp.bfloat16)
    labels = jnp.asarray(rng.integers(0, vocab, tokens), jnp.int32)

    def loss(x, w):
        return jwxent.linear_softmax_cross_entropy(x, w, labels, reduction="sum")

    with _platform.generic_only():
        dw = jax.jit(jax.grad(loss, argnums=1))(x, w)
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    z = x64 @ w64
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dz = p - np.eye(vocab)[np.asarray(labels)]
    expected, scale = x64.T @ dz, np.abs(x64).T @ np.abs(dz)
    logits_rounding = np.abs(x64).T @ (np.max(np.abs(z), axis=1, keepdims=True) * p)
    error = np.abs(np.asarray(dw, np.float64) - expected)
    u = 2.0**-8
    assert np.all(error <= (_chunks.GPU_CHUNKS + 2) * u * scale + 2 * u * logits_rounding)
    assert np.max(error / scale) > 2.0**-12  # bf16 rounding is visible, the bound is not vacuous


def test_xla_implementation_matches():
    with jax.enable_x64(True):
        d = make_inputs(vocab=23, seed=3)
        label_key, kwargs = CASES["everything"](d)
        _assert_values_and_grads(d, label_key, kwargs, ["none", "mean"], implementation="xla")


def test_defaults_match_optax_values_and_gradients():
    d = make_inputs(vocab=50, seed=4, dtype=np.float32)
    x, w, labels = jnp.asarray(d["x"]), jnp.asarray(d["w"]), jnp.asarray(d["labels"])

    def fused(x, w):
        return jnp.sum(jwxent.linear_softmax_cross_entropy(x, w, labels, chunk_size=16))

    def unfused(x, w):
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(x @ w, labels))

    both = jax.jit(
        lambda x, w: [jax.value_and_grad(f, argnums=(0, 1))(x, w) for f in (fused, unfused)]
    )
    (value, grads), (expected, expected_grads) = both(x, w)
    assert_close(value, expected, jnp.float32, terms=w.size)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert_close(grad, expected_grad, jnp.float32, terms=w.size)


def test_labels_have_no_cotangent():
    d = make_inputs(dtype=np.float32)
    x, w, labels = jnp.asarray(d["x"]), jnp.asarray(d["w"]), jnp.asarray(d["labels"])

    def total(labels):
        return jnp.sum(jwxent.linear_softmax_cross_entropy(x, w, labels))

    grad = jax.jit(jax.grad(total, allow_int=True))(labels)
    assert grad.dtype == jax.dtypes.float0
    assert grad.shape == labels.shape


# ---------------------------------------------------------------------------
# Precision, masking, labels out of range.
# ---------------------------------------------------------------------------


def test_masked_rows_have_exactly_zero_gradient_even_with_nan_features():
    d = make_inputs(vocab=20, seed=7, dtype=np.float32)
    x = d["x"].copy()
    where = d["where"]
    x[~where] = np.nan

    def loss(x, w):
        return jwxent.linear_softmax_cross_entropy(
            x, w, d["labels"], where=where, reduction="mean", chunk_size=6
        )

    value, (dx, dw) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, d["w"])
    expected = ref.linear_softmax_cross_entropy(
        np.where(where[..., None], x, 0.0), d["w"], d["labels"], where=where, reduction="mean"
    )
    assert_close(value, expected, jnp.float32, terms=d["w"].size)
    assert np.all(np.asarray(dx)[~where] == 0.0)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dw))


# ---------------------------------------------------------------------------
# Transforms.
# ---------------------------------------------------------------------------


def _loss_of(d, **options):
    labels = jnp.asarray(d["labels"])

    def loss(x, w, class_weights):
        return jwxent.linear_softmax_cross_entropy(
            x, w, labels, class_weights=class_weights, chunk_size=8, **options
        )

    return loss


def test_default_implementation_streams_and_xla_does_not():
    d = make_inputs(vocab=30, dtype=np.float32)
    args = (d["x"], d["w"], d["labels"])

    def jaxpr(implementation):
        loss = lambda *a: jwxent.linear_softmax_cross_entropy(*a, implementation=implementation)
        return str(jax.make_jaxpr(jax.grad(lambda *a: jnp.sum(loss(*a)), argnums=(0, 1)))(*args))

    # The whole logits are [3, 4, 30] (or [12, 30] with the rows flattened).
    for streamed in (jaxpr(None), jaxpr("chunked")):
        assert "f32[3,4,30]" not in streamed and "f32[12,30]" not in streamed
    assert "f32[3,4,30]" in jaxpr("xla")


# ---------------------------------------------------------------------------
# Memory: XLA's own accounting of the compiled value_and_grad.
# ---------------------------------------------------------------------------


def _temp_bytes(loss, *args):
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def _shape_args(tokens, hidden, vocab):
    x = jax.ShapeDtypeStruct((tokens, hidden), jnp.float32)
    w = jax.ShapeDtypeStruct((hidden, vocab), jnp.float32)
    return x, w, jax.ShapeDtypeStruct((tokens,), jnp.int32)


@pytest.mark.parametrize(
    ("tokens", "hidden", "vocab"),
    # The second is a shape of the memory bar (docs/benchmarks.md): there one
    # `[hidden, vocab]` float32 product too many (125 MiB) would miss it.
    [(2048, 128, 16384), (4096, 1024, 32000)],
)
def test_temp_memory_is_at_most_an_eighth_of_unfused(tokens, hidden, vocab):
    args = _shape_args(tokens, hidden, vocab)

    def fused(x, w, labels):
        return jwxent.linear_softmax_cross_entropy(x, w, labels, reduction="mean")

    def unfused(x, w, labels):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x @ w, labels))

    fused_bytes, unfused_bytes = _temp_bytes(fused, *args), _temp_bytes(unfused, *args)
    logits_bytes = tokens * vocab * 4
    assert unfused_bytes >= logits_bytes  # the baseline does hold the logits
    assert fused_bytes <= unfused_bytes / 8, (fused_bytes, unfused_bytes)


def test_temp_memory_does_not_grow_with_tokens():
    def fused(x, w, labels):
        return jwxent.linear_softmax_cross_entropy(x, w, labels, reduction="sum", chunk_size=64)

    small = _temp_bytes(fused, *_shape_args(512, 64, 4096))
    large = _temp_bytes(fused, *_shape_args(4096, 64, 4096))
    # Only per-token vectors grow (and the chunked copy of `x`), not the logits.
    per_token = 4096 * (64 + 16) * 4
    assert large <= small + per_token, (small, large)


@pytest.mark.parametrize("platform", ["cpu", "cuda", "tpu"])
def test_four_million_tokens_lower_without_any_array_past_the_inputs(platform):
    """4M tokens × 8k hidden × 32k vocabulary: `x` alone has 2^35 elements, past
    int32. The program lowers (nothing allocated) for each platform's plan,
    every array larger than 2^31 elements is `x`, `dx` or a view of them, and
    the logits exist only a chunk at a time."""
    tokens, hidden, vocab = 4 * 2**20, 8192, 32000
    x = jax.ShapeDtypeStruct((tokens, hidden), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((hidden, vocab), jnp.bfloat16)
    labels = jax.ShapeDtypeStruct((tokens,), jnp.int32)

    def loss(x, w, labels):
        return jwxent.linear_softmax_cross_entropy(x, w, labels, reduction="mean")

    traced = jax.jit(jax.value_and_grad(loss, (0, 1))).trace(x, w, labels)
    text = traced.lower(lowering_platforms=(platform,)).as_text()
    sizes = {
        int(np.prod([int(d) for d in dims.split("x")]))
        for dims in re.findall(r"tensor<((?:\d+x)+)[a-z]", text)
        for dims in [dims.rstrip("x")]
    }
    assert max(sizes) == tokens * hidden
    assert {n for n in sizes if n > 2**31} == {tokens * hidden}
    # Nothing with a vocabulary axis is larger than `w`: no `[tokens, vocab]` logits.
    assert not [n for n in sizes if n % vocab == 0 and n > hidden * vocab]


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


def _call(**overrides):
    d = make_inputs(vocab=12, dtype=np.float32)
    args = {"x": d["x"], "w": d["w"], "labels": d["labels"], **overrides}
    return jwxent.linear_softmax_cross_entropy(
        args.pop("x"), args.pop("w"), args.pop("labels"), **args
    )


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"x": np.ones((3, 4, 5), np.int32)},
            r"`x` must be a floating-point array, got dtype int32",
        ),
        ({"w": np.ones((5, 12), np.int32)}, r"`w` must be a floating-point array"),
        ({"labels": np.zeros((3, 4), np.float32)}, r"`labels` must be an integer array"),
        ({"w": np.ones((5, 12), np.float64)}, r"`x` and `w` must have the same dtype"),
        ({"bias": np.ones(12, np.int32)}, r"`bias` must be a floating-point array"),
    ],
)
def test_wrong_dtypes_raise_type_error(overrides, match):
    with jax.enable_x64(True), pytest.raises(TypeError, match=match):
        _call(**overrides)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"x": np.float32(1.0)}, r"`x` must have a hidden axis"),
        ({"w": np.ones((4, 12), np.float32)}, r"`w` must have shape \[hidden, vocab\].*\(4, 12\)"),
        ({"w": np.ones(5, np.float32)}, r"`w` must have shape \[hidden, vocab\]"),
        ({"labels": np.zeros((3,), np.int32)}, r"`labels` must have shape \(3, 4\)"),
        ({"bias": np.ones(11, np.float32)}, r"`bias` must have shape \(12,\) \(\[vocab\]\)"),
        ({"class_weights": np.ones(11, np.float32)}, r"`class_weights` must have shape \(12,\)"),
        ({"weights": np.ones((3, 4, 1), np.float32)}, r"`weights` of shape \(3, 4, 1\)"),
        ({"where": np.ones((3, 4, 12), bool)}, r"`where` of shape \(3, 4, 12\)"),
        ({"where": np.ones((3, 4, 12), bool), "implementation": "xla"}, r"`where` of shape"),
        ({"chunk_size": 0}, r"`chunk_size` must be None or a positive int; got 0"),
        ({"chunk_size": 2.5}, r"`chunk_size` must be None or a positive int; got 2.5"),
        ({"chunk_size": True}, r"`chunk_size` must be None or a positive int; got True"),
        ({"implementation": "pallas"}, r"`implementation` must be None or one of 'xla', 'chunked'"),
        ({"logit_soft_cap": 0.0}, r"`logit_soft_cap` must be None or > 0; got 0.0"),
        ({"label_smoothing": 1.0}, r"`label_smoothing` must be in \[0, 1\)"),
        ({"z_loss": -1.0}, r"`z_loss` must be >= 0"),
        ({"reduction": "avg"}, r"`reduction` must be one of 'none', 'sum'"),
    ],
)
def test_bad_shapes_and_options_raise_value_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        _call(**overrides)
