"""Fused linear projection + softmax cross-entropy for large vocabularies.

`linear_softmax_cross_entropy(x, w, labels)` is
`softmax_cross_entropy_with_integer_labels(x @ w + bias, labels)` without the
`[tokens, vocab]` logits. The tokens are cut into chunks of `t` rows; each
chunk's `[t, vocab]` logits are made, used and dropped. Per chunk, the loss is
exactly the integer-label pipeline of the softmax losses (`_softmax._core`
statistics, `_softmax._losses.integer_label_loss`), so every keyword means the
same thing here.

Scalar reductions go through `_weighted_sum`, a `jax.custom_jvp` of
`S = Σ_b v_b·ℓ_b` (`v` the reduction's coefficient of each example). Its value
alone costs one matmul per chunk. Its JVP rule sweeps the chunks once and,
while a chunk's logits exist, takes their gradient from the softmax core and
turns it into `dx = dz @ wᵀ` and `dw += xᵀ @ dz`: three matmuls in all, where
recomputing the logits in a backward pass costs four. The tangent is then
`⟨G_x, dx⟩ + ⟨G_w, dw⟩ + …`, which reverse mode transposes into a scaling of the
stored gradients, and forward mode evaluates as it is.

`reduction="none"` returns one loss per token, so no single gradient can be
formed ahead; it is a plain `lax.scan` over chunks with a checkpointed body
(the logits are recomputed in the backward pass: four matmuls).

Chunk `c` holds the *strided* tokens `i·num_chunks + c`: with the tokens
sharded over devices, that sharding lands on the within-chunk axis, so every
device works on its own rows of every chunk. With `w` sharded along the
vocabulary, each device computes its columns of the chunk's logits, and only
`[t]` statistics and `[t, hidden]` partial products cross devices.
"""

import dataclasses
import functools
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.sharding import AxisType

from jwxent import _checks, _reduction
from jwxent._numerics import compute_dtype, hyperparameter, is_static_zero
from jwxent._platform import by_platform
from jwxent._softmax._core import Target, row_stats
from jwxent._softmax._inputs import IntegerLabels, class_vector, prepare_integer_labels
from jwxent._softmax._losses import (
    check_options,
    integer_label_loss,
    softmax_cross_entropy_with_integer_labels,
)
from jwxent._softmax._passes import take_class
from jwxent._typing import Array, ArrayLike, Reduction

Implementation = Literal["xla", "chunked"]
_IMPLEMENTATIONS: tuple[str, ...] = ("xla", "chunked")

# A chunk of about 2^22 float32 logits (16 MiB) and at most 1/16 of the
# tokens, at least 8 tokens.
_CHUNK_ELEMENTS = 2**22
_MIN_NUM_CHUNKS = 16
_MIN_CHUNK = 8
# The weight gradient of a chunk is added this many blocks of hidden rows at a time.
_WEIGHT_BLOCKS = 8

# ---------------------------------------------------------------------------
# How the tokens are cut into chunks.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static layout of the token chunks.

    Attributes:
      num_tokens: tokens before padding.
      chunk: tokens per chunk (`t`).
      num_chunks: number of chunks; `chunk·num_chunks >= num_tokens`.
    """

    num_tokens: int
    chunk: int
    num_chunks: int

    @property
    def padding(self) -> int:
        return self.chunk * self.num_chunks - self.num_tokens


def make_plan(num_tokens: int, vocab: int, chunk_size: int | None) -> Plan:
    """Chunks of `chunk_size` tokens or about `_CHUNK_ELEMENTS` logits, evenly filled.

    By default a chunk of a multiple of 8 tokens that divides the tokens is
    preferred (no padding: XLA:CPU pads and reorders bf16 arrays in float32,
    which would write out a float32 copy of `x`), down to half the target.
    """
    by_memory = _CHUNK_ELEMENTS // max(vocab, 1)
    target = chunk_size or max(_MIN_CHUNK, min(by_memory, -(-num_tokens // _MIN_NUM_CHUNKS)))
    if chunk_size is None and num_tokens:
        for chunk in range(target - target % _MIN_CHUNK, target // 2, -_MIN_CHUNK):
            if chunk and num_tokens % chunk == 0:
                return Plan(num_tokens, chunk, num_tokens // chunk)
    num_chunks = max(1, math.ceil(num_tokens / max(target, 1)))
    chunk = math.ceil(num_tokens / num_chunks)
    if chunk_size is None and num_chunks > 1:
        chunk = -(-chunk // _MIN_CHUNK) * _MIN_CHUNK  # a multiple of 8 divides among devices
    return Plan(num_tokens, max(chunk, 1), num_chunks)


def _chunked(a: Array, plan: Plan, fill: bool | int = 0) -> Array:
    """`[tokens, ...]` -> `[chunk, num_chunks, ...]`; chunk `c` is `[:, c]`, the tokens
    `i·num_chunks + c`. A reshape, no copy (but padding tokens, which are `fill`).
    """
    if plan.padding:
        a = jnp.concatenate([a, jnp.full((plan.padding, *a.shape[1:]), fill, a.dtype)])
    return a.reshape(plan.chunk, plan.num_chunks, *a.shape[1:])


def _unchunked(a: Array, plan: Plan) -> Array:
    """The inverse of `_chunked` for per-token results."""
    return a.reshape(plan.chunk * plan.num_chunks, *a.shape[2:])[: plan.num_tokens]


def _chunk(views, c: Array):
    """Chunk `c` of every `[chunk, num_chunks, ...]` view in a pytree (None stays)."""
    return jax.tree.map(lambda v: lax.dynamic_index_in_dim(v, c, axis=1, keepdims=False), views)


def _write(view: Array, part: Array, c: Array) -> Array:
    """`view` with chunk `c` replaced by `part` (in place inside a loop)."""
    update = lax.expand_dims(part.astype(view.dtype), (1,))
    sharding = _explicit_sharding(view)
    if sharding is not None:
        update = jax.sharding.reshard(update, sharding)
    return lax.dynamic_update_index_in_dim(view, update, c, axis=1)


# ---------------------------------------------------------------------------
# One chunk.
# ---------------------------------------------------------------------------


class _Shared(NamedTuple):
    """Inputs that every chunk reads whole (all differentiable but `plan`-free)."""

    w: Array
    bias: Array | None
    class_weights: Array | None
    offsets: Array | None
    margins: Array | None
    label_smoothing: Array | None
    z_loss: Array | None
    soft_cap: Array | None


class _Rows(NamedTuple):
    """Per-token inputs of one chunk (or of all chunks, with a leading chunk axis)."""

    x: Array
    labels: Array
    valid: Array
    coefficients: Array


def _explicit_sharding(like: Array) -> jax.sharding.NamedSharding | None:
    """The sharding of `like` when its mesh has `Explicit` axes (sharding in types)."""
    sharding = jax.typeof(like).sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or AxisType.Explicit not in mesh.axis_types:
        return None
    return sharding


def _transposed_sharding(like: Array) -> jax.sharding.NamedSharding | None:
    """The explicit sharding of `like.T` for a 2-D `like` (None without explicit axes)."""
    sharding = _explicit_sharding(like)
    if sharding is None:
        return None
    return jax.sharding.NamedSharding(sharding.mesh, jax.P(*reversed(tuple(sharding.spec))))


def _matmul(a: Array, b: Array, like: Array, dtype: jnp.dtype) -> Array:
    """`a @ b` accumulated in `dtype`, sharded like `like` under sharding in types."""
    return jnp.matmul(a, b, preferred_element_type=dtype, out_sharding=_explicit_sharding(like))


def _capped(u: Array, soft_cap: Array | None) -> Array:
    return u if soft_cap is None else soft_cap * jnp.tanh(u / soft_cap)


def _row_losses(u: Array, rows: _Rows, shared: _Shared) -> Array:
    """`[t]` losses of one chunk from its uncapped logits `u` (the softmax pipeline)."""
    dtype = u.dtype
    z = _capped(u, None if shared.soft_cap is None else shared.soft_cap.astype(dtype))
    cw = shared.class_weights
    labels = IntegerLabels(
        labels=rows.labels,
        valid=rows.valid,
        mask=None,
        class_weights=cw,
        label_weight=None if cw is None else take_class(cw, rows.labels),
    )
    smoothing = None if shared.label_smoothing is None else Target(None, cw)
    stats = row_stats(
        z,
        labels=rows.labels,
        offsets=shared.offsets,
        margins=shared.margins,
        targets=() if smoothing is None else (smoothing,),
    )
    return integer_label_loss(
        stats,
        labels,
        num_classes=z.shape[-1],
        label_smoothing=0.0 if shared.label_smoothing is None else shared.label_smoothing,
        z_loss=0.0 if shared.z_loss is None else shared.z_loss,
    )


def _uncapped_logits(x: Array, shared: _Shared) -> Array:
    dtype = compute_dtype(x.dtype)
    u = jnp.matmul(x, shared.w, preferred_element_type=dtype)
    if shared.bias is not None:
        u = u + shared.bias.astype(dtype)[None, :]
    return u


def _chunk_sum(rows: _Rows, shared: _Shared) -> Array:
    """`Σ_b v_b·ℓ_b` over one chunk (one matmul)."""
    losses = _row_losses(_uncapped_logits(rows.x, shared), rows, shared)
    return jnp.sum(rows.coefficients * losses)


def _chunk_sum_and_grads(rows: _Rows, shared: _Shared):
    """`Σ_b v_b·ℓ_b` over one chunk and its gradients: three matmuls.

    The loss is differentiated with respect to the chunk's logits (and the
    small per-class inputs) by the softmax core; `dx` and `dw` are then
    formed here with matmul operands in the inputs' dtype and float32
    accumulation.
    """
    dtype = compute_dtype(rows.x.dtype)
    u = _uncapped_logits(rows.x, shared)
    small = shared._replace(w=None, bias=None)

    def loss_of_logits(u, coefficients, small):
        losses = _row_losses(u, rows._replace(coefficients=coefficients), small)
        return jnp.sum(coefficients * losses), losses

    grad = jax.grad(loss_of_logits, argnums=(0, 1, 2), has_aux=True)
    (du, d_coefficients, d_small), losses = grad(u, rows.coefficients, small)
    value = jnp.sum(rows.coefficients * losses)
    du_in = du.astype(rows.x.dtype)
    # `(w @ duᵀ)ᵀ` rather than `du @ wᵀ`: XLA:CPU would otherwise write a
    # transposed copy of all of `w`; this way it transposes one chunk of `du`.
    dx = lax.dot_general(
        shared.w,
        du_in,
        (((1,), (1,)), ((), ())),
        preferred_element_type=dtype,
        out_sharding=_transposed_sharding(rows.x),
    ).T.astype(rows.x.dtype)
    d_shared = d_small._replace(bias=None if shared.bias is None else jnp.sum(du, axis=0))
    return value, _Rows(dx, None, None, d_coefficients), d_shared, du  # type: ignore[arg-type]


def _transposed_apart(x: Array) -> Array:
    """`xᵀ` behind a barrier (XLA:CPU only).

    XLA:CPU folds a transpose into a product, and its library product takes
    half precision only for a row-major left operand; folded, the product of
    bf16 `xᵀ` runs on float32 converts, and the convert of `x` is moved in
    front of the loop's slice: a float32 copy of all of `x` (32 MiB at
    8192 × 1024, an eighth of the loss's bf16 temporaries).
    """
    if x.dtype == compute_dtype(x.dtype):
        return x.T  # a float32 product folds the transpose at no cost
    return lax.optimization_barrier(x.T)


def _add_weight_gradient(dw: Array, x: Array, du: Array) -> Array:
    """`dw + xᵀ @ du` for `[hidden, vocab]` `dw`, a block of hidden rows at a time.

    One `[hidden, vocab]` product would be a second gradient-sized buffer next
    to the accumulator; a block of rows of it is a fraction of one, added in
    place. Blocks of the hidden axis leave the vocabulary axis whole, so `w`
    may be sharded along it. The operands are in the inputs' dtype (a float32
    `x` would be hoisted out of the loop as a float32 copy of all of `x`), the
    product accumulates in float32.
    """
    hidden = dw.shape[0]
    rows = -(-hidden // _WEIGHT_BLOCKS)
    x_t = by_platform(x, cpu=_transposed_apart, default=jnp.transpose)
    for start in range(0, hidden, rows):
        stop = min(start + rows, hidden)
        block = lax.slice_in_dim(dw, start, stop, axis=0)
        part = _matmul(lax.slice_in_dim(x_t, start, stop, axis=0), du, block, dw.dtype)
        dw = lax.dynamic_update_slice_in_dim(dw, block + part, start, axis=0)
    return dw


# ---------------------------------------------------------------------------
# Scalar reductions: the custom-JVP weighted sum.
# ---------------------------------------------------------------------------


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _weighted_sum(plan: Plan, rows: _Rows, shared: _Shared) -> Array:
    """`Σ_b v_b·ℓ_b` over every chunk; `rows` are `[chunk, num_chunks, ...]` views."""

    def body(c, total):
        return total + _chunk_sum(_chunk(rows, c), shared)

    zero = jnp.zeros((), compute_dtype(rows.x.dtype))
    return lax.fori_loop(0, plan.num_chunks, body, zero)


def _weighted_sum_jvp(plan, primals, tangents):
    rows, shared = primals
    d_rows, d_shared = tangents
    value, grads = _value_and_grads(plan, rows, shared)
    # Products in the inputs' dtype, sums in the loss's: reverse mode then scales
    # each stored gradient in its own dtype, with no float32 copy of a bf16 one.
    terms = [
        jnp.sum((g.astype(d.dtype) * d).astype(value.dtype))
        for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves((d_rows, d_shared)), strict=True)
        if not isinstance(d, SymbolicZero) and jnp.issubdtype(d.dtype, jnp.inexact)
    ]
    tangent = functools.reduce(jnp.add, terms) if terms else SymbolicZero(jax.typeof(value))
    return value, tangent


def _value_and_grads(plan: Plan, rows: _Rows, shared: _Shared):
    """The value and the gradients of every input, in one sweep over the chunks."""
    dtype = compute_dtype(rows.x.dtype)
    zeros = jax.tree.map(lambda a: jnp.zeros_like(a, dtype=dtype), shared)
    d_views = (jnp.zeros_like(rows.x), jnp.zeros_like(rows.coefficients))

    def body(c, carry):
        total, d_shared, (dx, d_coefficients) = carry
        chunk_rows = _chunk(rows, c)
        value, d_rows, d_chunk, du = _chunk_sum_and_grads(chunk_rows, shared)
        dw = _add_weight_gradient(d_shared.w, chunk_rows.x, du.astype(chunk_rows.x.dtype))
        d_shared = jax.tree.map(jnp.add, d_shared._replace(w=None), d_chunk)._replace(w=dw)
        d_views = (_write(dx, d_rows.x, c), _write(d_coefficients, d_rows.coefficients, c))
        return total + value, d_shared, d_views

    init = (jnp.zeros((), dtype), zeros, d_views)
    total, d_shared, (dx, d_coefficients) = lax.fori_loop(0, plan.num_chunks, body, init)
    return total, (rows._replace(x=dx, coefficients=d_coefficients), d_shared)


_weighted_sum.defjvp(_weighted_sum_jvp, symbolic_zeros=True)


def _per_token(plan: Plan, rows: _Rows, shared: _Shared) -> Array:
    """`[tokens]` losses for `reduction="none"`: a loop over chunks, each checkpointed."""

    @jax.checkpoint
    def chunk_losses(chunk_rows):
        return _row_losses(_uncapped_logits(chunk_rows.x, shared), chunk_rows, shared)

    def body(c, losses):
        return _write(losses, chunk_losses(_chunk(rows, c)), c)

    dtype = compute_dtype(rows.x.dtype)
    losses = lax.fori_loop(0, plan.num_chunks, body, jnp.zeros_like(rows.coefficients, dtype))
    return _unchunked(losses, plan)


# ---------------------------------------------------------------------------
# Validation and the public loss.
# ---------------------------------------------------------------------------


def _check_inputs(x: Array, w: Array, labels: Array, bias: Array | None) -> None:
    _checks.check_floating(x, "x")
    _checks.check_floating(w, "w")
    _checks.check_integer(labels, "labels")
    if x.ndim == 0:
        raise ValueError("`x` must have a hidden axis, [*batch, hidden]; got a scalar.")
    if w.ndim != 2 or w.shape[0] != x.shape[-1]:
        raise ValueError(
            f"`w` must have shape [hidden, vocab] with hidden = x.shape[-1] = {x.shape[-1]}; "
            f"got {tuple(w.shape)}."
        )
    if w.dtype != x.dtype:
        raise TypeError(
            f"`x` and `w` must have the same dtype; got {x.dtype} and {w.dtype}. "
            "Cast one explicitly."
        )
    _checks.check_shape(labels, x.shape[:-1], "labels", "x.shape[:-1]")
    if bias is not None:
        _checks.check_floating(bias, "bias")
        _checks.check_shape(bias, w.shape[1:], "bias", "[vocab]")


def _check_fused_options(
    logit_soft_cap: ArrayLike | None, chunk_size: int | None, implementation: str | None
) -> None:
    if logit_soft_cap is not None:
        _checks.check_hyperparameter(logit_soft_cap, "logit_soft_cap", minimum=0.0)
        known = _checks.concrete_value(logit_soft_cap)
        if known is not None and known == 0:
            raise ValueError(f"`logit_soft_cap` must be None or > 0; got {float(known)}.")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"`chunk_size` must be None or a positive int; got {chunk_size!r}.")
    if implementation is not None and implementation not in _IMPLEMENTATIONS:
        raise ValueError(
            f"`implementation` must be None or one of {', '.join(map(repr, _IMPLEMENTATIONS))}; "
            f"got {implementation!r}."
        )


def _optional(value: ArrayLike | None, dtype: jnp.dtype) -> Array | None:
    """A hyperparameter as a scalar array, or None when it is statically absent or 0."""
    if value is None or is_static_zero(value):
        return None
    return hyperparameter(value, dtype)


def _unfused_loss(x, w, labels, bias, logit_soft_cap, **options) -> Array:
    """The `"xla"` implementation: `[*batch, vocab]` logits, then the softmax loss."""
    dtype = compute_dtype(x.dtype)
    z = jnp.matmul(x, w, preferred_element_type=dtype)
    if bias is not None:
        z = z + bias.astype(dtype).reshape((1,) * (z.ndim - 1) + bias.shape)
    cap = None if logit_soft_cap is None else hyperparameter(logit_soft_cap, dtype)
    return softmax_cross_entropy_with_integer_labels(_capped(z, cap), labels, **options)


def linear_softmax_cross_entropy(
    x: ArrayLike,
    w: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    class_weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    logit_soft_cap: ArrayLike | None = None,
    logit_adjustment: ArrayLike | None = None,
    label_margins: ArrayLike | None = None,
    reduction: Reduction = "none",
    chunk_size: int | None = None,
    implementation: Implementation | None = None,
) -> Array:
    r"""Softmax cross-entropy of a linear projection, without the `[tokens, vocab]` logits.

    Computes what
    `softmax_cross_entropy_with_integer_labels(x @ w + bias, labels, ...)`
    computes, for language-model heads and extreme classification where the
    logits do not fit in memory (Apple's Cut Cross-Entropy, Liger's
    `FusedLinearCrossEntropyLoss`, tokamax's `linear_softmax_cross_entropy_loss`).
    The default `"chunked"` implementation makes the logits of `chunk_size`
    tokens at a time, so temp memory is O(chunk_size × vocab) plus the
    gradient of `w` instead of O(tokens × vocab).

    With logits $z = \mathrm{cap}(x W + b)$, where the optional soft cap of
    Gemma 2 is $\mathrm{cap}(u) = c\tanh(u / c)$, and the notation of
    `softmax_cross_entropy_with_integer_labels` (logit adjustment $\delta$ and
    label margins $m$ included):

    $$
    \ell = (1-\varepsilon)\,c_y\,(-\log p_y)
      + \frac{\varepsilon}{V}\sum_k c_k\,(-\log p_k)
      + \lambda_z\,c_y\,\bigl(\log\textstyle\sum_k e^{\tilde z_k}\bigr)^2 ,
      \qquad p = \mathrm{softmax}(\tilde z),
    $$

    weighted by $w = \text{weights}\cdot c_y$ and combined by `reduction`.

    Args:
      x: `[*batch, hidden]` floating-point features (the last hidden state).
      w: `[hidden, vocab]` projection (the unembedding), same dtype as `x`.
      labels: integer `[*batch]` class indices in `[0, vocab)`.
      bias: optional `[vocab]` bias added to the logits.
      weights: per-example multiplier broadcastable to `[*batch]`.
      class_weights: `[vocab]`, gathered by label (PyTorch `weight=`).
      where: bool mask broadcastable to `[*batch]`; masked examples give
        exactly 0 loss and 0 gradient.
      ignore_index: examples with this label are masked (PyTorch).
      label_smoothing: $\varepsilon \in [0, 1)$, PyTorch semantics (may be traced).
      z_loss: $\lambda_z \ge 0$, adds $\lambda_z\,c_y\,\mathrm{lse}^2$ per
        example (may be traced).
      logit_soft_cap: $c > 0$ of the Gemma 2 logit soft cap, or None (may be
        traced).
      logit_adjustment: `[vocab]` offsets added inside the softmax only.
      label_margins: `[vocab]` margins subtracted from the label's logit.
      reduction: `"none"`, `"sum"`, `"mean"`, `"weighted_mean"` or
        `"sum_by_nonzero_weights"`.
      chunk_size: tokens per chunk of the `"chunked"` implementation (None:
        about 2²² logits and at most 1/16 of the tokens per chunk, at least
        8 tokens, preferably a multiple of 8 that divides the tokens).
        Ignored by `"xla"`.
      implementation: `"chunked"` (the default for None) or `"xla"` (the
        unfused `x @ w` then the softmax loss, for reference).

    Returns:
      `[*batch]` losses for `reduction="none"`, else a scalar; float32 for
      half-precision inputs, the inputs' dtype otherwise.

    Raises:
      TypeError: non-floating `x`, `w` or `bias`, `x` and `w` of different
        dtypes, non-integer `labels`.
      ValueError: mismatched shapes, an unknown `reduction` or
        `implementation`, bad `label_smoothing`, `z_loss`, `logit_soft_cap` or
        `chunk_size`, and, in eager calls, labels out of range. Under `jit` an
        out-of-range label gives NaN for its example.

    Examples:
      Logits `x @ w` are `[[1, 0, 0], [0, 2, 0]]`, so the losses are
      `log(e + 2) − 1` and `log(e² + 2) − 2`:

      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> w = jnp.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
      >>> labels = jnp.array([0, 1])
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.linear_softmax_cross_entropy(x, w, labels, chunk_size=1))
      [0.5514 0.2395]
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.linear_softmax_cross_entropy(x, w, labels, reduction="mean"))
      0.3955

    Notes:
      For scalar reductions the `"chunked"` derivative is a `jax.custom_jvp`
      whose rule forms the gradients of `x`, `w`, `bias`, `weights`,
      `class_weights` and the per-class and scalar hyperparameters in the
      same sweep that makes each chunk's logits (three matmuls); reverse mode
      only scales them. With `reduction="none"` the logits are recomputed in
      the backward pass instead (four matmuls). Forward and reverse mode,
      `vmap` and `jax.hessian` all work. Under `jit` with `x` sharded over
      tokens or `w` over the vocabulary, no device gathers the logits; see
      the Scaling page of the docs.

    References:
      Wijmans et al., *Cut Your Losses in Large-Vocabulary Language Models*,
      ICLR 2025. Hsu et al., *Liger Kernel: Efficient Triton Kernels for LLM
      Training*, 2024. Gemma Team, *Gemma 2: Improving Open Language Models at
      a Practical Size*, 2024 (logit soft-capping).
    """
    x, w, labels = jnp.asarray(x), jnp.asarray(w), jnp.asarray(labels)
    bias = None if bias is None else jnp.asarray(bias)
    _check_inputs(x, w, labels, bias)
    check_options(label_smoothing, z_loss, reduction)
    _check_fused_options(logit_soft_cap, chunk_size, implementation)
    if implementation == "xla":
        if where is not None:
            _checks.check_broadcastable(jnp.asarray(where), labels.shape, "where")
        return _unfused_loss(
            x,
            w,
            labels,
            bias,
            logit_soft_cap,
            where=where,
            weights=weights,
            class_weights=class_weights,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            logit_adjustment=logit_adjustment,
            label_margins=label_margins,
            reduction=reduction,
        )
    dtype = compute_dtype(x.dtype)
    batch_shape, vocab = tuple(labels.shape), w.shape[1]
    targets = prepare_integer_labels(
        labels,
        batch_shape=batch_shape,
        num_classes=vocab,
        dtype=dtype,
        row_mask=_reduction.example_mask(batch_shape, where=where),
        class_weights=class_weights,
        ignore_index=ignore_index,
    )
    shared = _Shared(
        w=w,
        bias=bias,
        class_weights=targets.class_weights,
        offsets=class_vector(logit_adjustment, vocab, dtype, "logit_adjustment"),
        margins=class_vector(label_margins, vocab, dtype, "label_margins"),
        label_smoothing=_optional(label_smoothing, dtype),
        z_loss=_optional(z_loss, dtype),
        soft_cap=None if logit_soft_cap is None else hyperparameter(logit_soft_cap, dtype),
    )
    rows = x.reshape(-1, x.shape[-1])
    if targets.mask is not None:
        # Masked rows become zeros, so nothing non-finite in them reaches the gradient.
        rows = jnp.where(targets.mask.reshape(-1, 1), rows, jnp.zeros_like(rows))
    plan = make_plan(rows.shape[0], vocab, chunk_size)
    coefficients = _reduction.coefficients(
        reduction,
        batch_shape,
        dtype,
        weights=weights,
        mask=targets.mask,
        label_weight=targets.label_weight,
    )
    # Padding tokens: valid labels with coefficient 0.
    chunked = _Rows(
        _chunked(rows, plan),
        _chunked(targets.labels.reshape(-1), plan),
        _chunked(targets.valid.reshape(-1), plan, fill=True),
        _chunked(coefficients.reshape(-1), plan),
    )
    if reduction == "none":
        loss = _per_token(plan, chunked, shared).reshape(batch_shape)
        return _reduction.finish(
            loss, reduction, weights=weights, mask=targets.mask, label_weight=targets.label_weight
        )
    return _weighted_sum(plan, chunked, shared)
