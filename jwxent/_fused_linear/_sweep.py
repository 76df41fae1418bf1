"""The chunk sweep of the fused linear loss and its derivative rules.

`linear_softmax_cross_entropy(x, w, labels)` is
`softmax_cross_entropy_with_integer_labels(x @ w + bias, labels)` without the
`[tokens, vocab]` logits. The tokens are cut into chunks of `t` rows; each
chunk's `[t, vocab]` logits are made, used and dropped. Per chunk, the loss is
exactly the integer-label pipeline of the softmax losses (`_softmax._core`
statistics, `_softmax._losses.integer_label_loss`), so every keyword means the
same thing here.

Scalar reductions go through `weighted_sum`, a `jax.custom_jvp` of
`S = Σ_b v_b·ℓ_b` (`v` the reduction's coefficient of each example). Its value
alone costs one matmul per chunk. Its JVP rule sweeps the chunks once and,
while a chunk's logits exist, takes their gradient from the softmax core and
turns it into `dx = dz @ wᵀ` and `dw += xᵀ @ dz`: three matmuls in all, where
recomputing the logits in a backward pass costs four. The tangent is then
`⟨G_x, dx⟩ + ⟨G_w, dw⟩ + …`, which reverse mode transposes into a scaling of the
stored gradients, and forward mode evaluates as it is.

The chunk plan, the stored logits' dtype and the weight-gradient update
depend on the platform (`_platform.by_platform`): on GPUs and TPUs a few
large chunks (8 on GPUs, 16 to 24 on TPUs, `_chunks.accelerator_plan`),
logits stored in the inputs' dtype and a gradient accumulated in `w`'s dtype
inside the matmul (`GENERIC`); on XLA:CPU chunks sized for its caches,
float32 logits and a float32 accumulator (`XLA_CPU`, `_xla_cpu.py`).
docs/performance.md has the traffic model behind the choice.

`reduction="none"` returns one loss per token, so no single gradient can be
formed ahead; it is a plain `lax.scan` over chunks with a checkpointed body
(the logits are recomputed in the backward pass: four matmuls).

Chunk `c` holds the *strided* tokens `i·num_chunks + c`: with the tokens
sharded over devices, that sharding lands on the within-chunk axis, so every
device works on its own rows of every chunk. With `w` sharded along the
vocabulary, each device computes its columns of the chunk's logits, and only
`[t]` statistics and `[t, hidden]` partial products cross devices.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jwxent._fused_linear import _xla_cpu
from jwxent._fused_linear._chunks import (
    Plan,
    chunked,
    explicit_sharding,
    take_chunk,
    unchunked,
    write_chunk,
    zeros_like,
)
from jwxent._numerics import compute_dtype
from jwxent._platform import by_platform, vary_like
from jwxent._softmax._core import Target, row_stats
from jwxent._softmax._passes import take_class
from jwxent._softmax._pipeline import example_finish, integer_cross_entropy
from jwxent._typing import Array

# ---------------------------------------------------------------------------
# One chunk.
# ---------------------------------------------------------------------------


class Shared(NamedTuple):
    """Inputs that every chunk reads whole (all differentiable but `plan`-free)."""

    w: Array
    bias: Array | None
    class_weights: Array | None
    offsets: Array | None
    margins: Array | None
    label_smoothing: Array | None
    z_loss: Array | None
    soft_cap: Array | None


class Rows(NamedTuple):
    """Per-token inputs of one chunk (or of all chunks, with a leading chunk axis)."""

    x: Array
    labels: Array
    valid: Array
    coefficients: Array


def on_the_mesh_of_x(rows: Rows, shared: Shared) -> tuple[Rows, Shared]:
    """With `x` sharded in types (a mesh with `Explicit` axes): the per-token
    vectors laid out like its tokens, and each shared array that has no mesh
    replicated on `x`'s.

    The sweep's loop carries start as zeros laid out like these, and each
    chunk's results take `x`'s mesh: a carry of no mesh (a `mean` reduction's
    constant coefficients, a `w` placed without one) would not type-check
    against them (`dynamic_update_slice` asks for equal shardings).
    """
    sharding = explicit_sharding(rows.x)
    if sharding is None:
        return rows, shared
    tokens = jax.sharding.NamedSharding(sharding.mesh, jax.P(sharding.spec[0]))
    replicated = jax.sharding.NamedSharding(sharding.mesh, jax.P())

    def per_token(a: Array) -> Array:
        return a if jax.typeof(a).sharding == tokens else jax.sharding.reshard(a, tokens)

    def meshed(a: Array) -> Array:
        return a if explicit_sharding(a) is not None else jax.sharding.reshard(a, replicated)

    per_token_rows = Rows(rows.x, *map(per_token, rows[1:]))
    return per_token_rows, jax.tree.map(meshed, shared)


def _transposed_sharding(like: Array) -> jax.sharding.NamedSharding | None:
    """The explicit sharding of `like.T` for a 2-D `like` (None without explicit axes)."""
    sharding = explicit_sharding(like)
    if sharding is None:
        return None
    return jax.sharding.NamedSharding(sharding.mesh, jax.P(*reversed(tuple(sharding.spec))))


def capped(u: Array, soft_cap: Array | None) -> Array:
    return u if soft_cap is None else soft_cap * jnp.tanh(u / soft_cap)


def _row_losses(u: Array, rows: Rows, shared: Shared) -> Array:
    """`[t]` losses of one chunk from its uncapped logits `u` (the softmax pipeline).

    Half-precision `u` is converted inside each pass of the softmax core; a
    soft cap is applied in float32.
    """
    dtype = compute_dtype(u.dtype)
    z = u if shared.soft_cap is None else capped(u.astype(dtype), shared.soft_cap.astype(dtype))
    cw = shared.class_weights
    label_weight = None if cw is None else take_class(cw, rows.labels)
    smoothing, total = None, None
    if shared.label_smoothing is not None:
        smoothing = {"smoothing": Target(None, cw)}
        total = jnp.asarray(z.shape[-1], dtype) if cw is None else jnp.sum(cw)
    stats = row_stats(
        z, labels=rows.labels, offsets=shared.offsets, margins=shared.margins, targets=smoothing
    )
    epsilon = 0.0 if shared.label_smoothing is None else shared.label_smoothing
    loss = integer_cross_entropy(stats, label_weight, total, epsilon, z.shape[-1])
    z_loss = 0.0 if shared.z_loss is None else shared.z_loss
    return example_finish(loss, stats.lse, label_weight, rows.valid, z_loss)


def _uncapped_logits(x: Array, shared: Shared, stored: jnp.dtype | None = None) -> Array:
    """`x @ w + bias`, accumulated in float32 and stored in `stored` (default: float32).

    Without a bias the matmul returns `stored` itself: the product is rounded
    once either way, but a float32 result that a separate kernel converts is a
    second chunk-sized array (the cuBLASLt matmul that XLA autotunes to on an
    H200 does not take the convert; measured there, 8192 × 4096 × 128256
    bf16: 797 → 534 MB of temp and 44.7 → 43.4 ms, docs/benchmarks.md).
    """
    dtype = compute_dtype(x.dtype)
    if shared.bias is None and stored is not None:
        return jnp.matmul(x, shared.w, preferred_element_type=stored)
    u = jnp.matmul(x, shared.w, preferred_element_type=dtype)
    if shared.bias is not None:
        u = u + shared.bias.astype(dtype)[None, :]
    return u if stored is None else u.astype(stored)


def _chunk_sum(rows: Rows, shared: Shared, stored: jnp.dtype | None = None) -> Array:
    """`Σ_b v_b·ℓ_b` over one chunk (one matmul)."""
    losses = _row_losses(_uncapped_logits(rows.x, shared, stored), rows, shared)
    return jnp.sum(rows.coefficients * losses)


def _chunk_sum_and_grads(rows: Rows, shared: Shared, stored: jnp.dtype | None = None):
    """`Σ_b v_b·ℓ_b` over one chunk and its gradients: three matmuls.

    The loss is differentiated with respect to the chunk's logits (and the
    small per-class inputs) by the softmax core; `dx` and `dw` are then
    formed here with matmul operands in the inputs' dtype and float32
    accumulation.
    """
    dtype = compute_dtype(rows.x.dtype)
    u = _uncapped_logits(rows.x, shared, stored)
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
    d_bias = None if shared.bias is None else jnp.sum(du, axis=0, dtype=dtype)
    d_shared = d_small._replace(bias=d_bias)
    return value, Rows(dx, None, None, d_coefficients), d_shared, du  # type: ignore[arg-type]


def _add_weight_gradient(dw: Array, x: Array, du: Array) -> Array:
    """`dw + xᵀ @ du`, `dw` in `w`'s dtype: the generic (GPU and TPU) form.

    `x`: `[t, hidden]`, `du`: `[t, vocab]`, both in the inputs' dtype. The
    product accumulates in float32 and is rounded once into `dw`; GPU and TPU
    compilers fuse the addition into the matmul (cuBLAS `beta = 1`, a TPU
    output fusion), so `dw` is read and written once per chunk and no
    `[hidden, vocab]` float32 product exists. In float32 nothing is lost; in
    half precision each chunk rounds `dw` once (see docs/performance.md).
    """
    part = lax.dot_general(
        x,
        du,
        (((0,), (0,)), ((), ())),
        preferred_element_type=compute_dtype(x.dtype),
        out_sharding=explicit_sharding(dw),
    )
    return dw + part.astype(dw.dtype)


class ChunkForm(NamedTuple):
    """How one platform makes a chunk's logits and accumulates the weight gradient.

    Attributes:
      stored: `x.dtype -> dtype` of the chunk's stored logits (the matmul
        accumulates in float32 either way).
      zeros: `w -> dw`, the accumulator before the first chunk.
      add: `(dw, x, du) -> dw + xᵀ @ du` for one chunk.
    """

    stored: Callable[[jnp.dtype], jnp.dtype]
    zeros: Callable[[Array], Array]
    add: Callable[[Array, Array, Array], Array]


def _as_inputs(dtype: jnp.dtype) -> jnp.dtype:
    """Logits stored in the inputs' dtype, as `x @ w` would be (bf16 for bf16 inputs).

    On GPUs and TPUs the chunk's logits are the largest traffic of the loss:
    written by the matmul, read by the log-sum-exp pass and the gradient pass.
    Half-precision logits halve that and let the gradient overwrite them in
    place; the loss is still computed in float32 from them, exactly as the
    unfused loss computes it from `x @ w` (docs/performance.md).
    """
    return jnp.dtype(dtype)


GENERIC = ChunkForm(_as_inputs, zeros_like, _add_weight_gradient)
# XLA:CPU stores float32 logits (`compute_dtype`): its plan was tuned with them.
XLA_CPU = ChunkForm(compute_dtype, _xla_cpu.weight_gradient_zeros, _xla_cpu.add_weight_gradient)


class Plans(NamedTuple):
    """The chunk plans of one call (static): XLA:CPU's, GPUs' (the default) and TPUs'."""

    cpu: Plan
    default: Plan
    tpu: Plan

    def tpu_form(self, form: Callable[..., Any]) -> Callable[..., Any] | None:
        """`form` for `by_platform`'s TPU branch, or None where the TPU plan is the
        default one (few tokens): the default form is then traced once, not twice."""
        return None if self.tpu == self.default else form


def _views(rows: Rows, plan: Plan) -> Rows:
    """`[tokens, ...]` rows as `[chunk, num_chunks, ...]` views (padding tokens count 0)."""
    return Rows(
        chunked(rows.x, plan),
        chunked(rows.labels, plan),
        chunked(rows.valid, plan, fill=True),
        chunked(rows.coefficients, plan),
    )


# ---------------------------------------------------------------------------
# Scalar reductions: the custom-JVP weighted sum.
# ---------------------------------------------------------------------------


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def weighted_sum(plans: Plans, rows: Rows, shared: Shared) -> Array:
    """`Σ_b v_b·ℓ_b` over every chunk of the platform's plan; `rows` are `[tokens, ...]`."""
    return by_platform(
        rows,
        shared,
        cpu=functools.partial(_sum, plans.cpu, XLA_CPU),
        default=functools.partial(_sum, plans.default, GENERIC),
        tpu=plans.tpu_form(functools.partial(_sum, plans.tpu, GENERIC)),
    )


def _sum(plan: Plan, form: ChunkForm, rows: Rows, shared: Shared) -> Array:
    views = _views(rows, plan)
    shared = vary_like(shared, views)  # see `per_token`
    stored = form.stored(rows.x.dtype)

    def body(c, total):
        return total + _chunk_sum(take_chunk(views, c), shared, stored)

    zero = vary_like(jnp.zeros((), compute_dtype(rows.x.dtype)), (views, shared))
    return lax.fori_loop(0, plan.num_chunks, body, zero)


def _weighted_sum_jvp(plans, primals, tangents):
    rows, shared = primals
    d_rows, d_shared = tangents
    value, grads = _value_and_grads(plans, rows, shared)
    # Products in the inputs' dtype, sums in the loss's: reverse mode then scales
    # each stored gradient in its own dtype, with no float32 copy of a bf16 one.
    terms = [
        jnp.sum((g.astype(d.dtype) * d).astype(value.dtype))
        for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves((d_rows, d_shared)), strict=True)
        if not isinstance(d, SymbolicZero) and jnp.issubdtype(d.dtype, jnp.inexact)
    ]
    tangent = functools.reduce(jnp.add, terms) if terms else SymbolicZero(jax.typeof(value))
    return value, tangent


def _value_and_grads(plans: Plans, rows: Rows, shared: Shared):
    """The value and the gradients of every input, in one sweep over the platform's chunks.

    Both platforms' gradients have the inputs' shapes and dtypes (a `switch`
    needs one type), so XLA:CPU's float32 weight gradient is rounded to
    `w`'s dtype once, at the end.
    """
    total, dx, d_coefficients, d_shared = by_platform(
        rows,
        shared,
        cpu=functools.partial(_sweep, plans.cpu, XLA_CPU),
        default=functools.partial(_sweep, plans.default, GENERIC),
        tpu=plans.tpu_form(functools.partial(_sweep, plans.tpu, GENERIC)),
    )
    return total, (rows._replace(x=dx, coefficients=d_coefficients), d_shared)


def _sweep(plan: Plan, form: ChunkForm, rows: Rows, shared: Shared):
    """One loop over the chunks: the value, `dx`, the coefficients' and `shared`'s gradients.

    Per chunk: its logits (one matmul), their gradient `du` from the softmax
    core, `dx = du @ wᵀ` (a second) and `dw += xᵀ @ du` (a third).
    """
    views = _views(rows, plan)
    shared = vary_like(shared, views)  # see `per_token`
    dtype = compute_dtype(rows.x.dtype)
    zeros = jax.tree.map(lambda a: zeros_like(a, dtype), shared._replace(w=None))
    d_views = (zeros_like(views.x), zeros_like(views.coefficients))
    init = (jnp.zeros((), dtype), zeros._replace(w=form.zeros(shared.w)), d_views)
    # Inside `shard_map` the body's results vary over the axes its inputs vary
    # over (a replicated `w` meets sharded tokens); the loop carry must too.
    init = vary_like(init, (views, shared))
    stored = form.stored(rows.x.dtype)

    def body(c, carry):
        total, d_shared, (dx, d_coefficients) = carry
        chunk_rows = take_chunk(views, c)
        value, d_rows, d_chunk, du = _chunk_sum_and_grads(chunk_rows, shared, stored)
        dw = form.add(d_shared.w, chunk_rows.x, du.astype(chunk_rows.x.dtype))
        d_shared = jax.tree.map(jnp.add, d_shared._replace(w=None), d_chunk)._replace(w=dw)
        d_views = (
            write_chunk(dx, d_rows.x, c),
            write_chunk(d_coefficients, d_rows.coefficients, c),
        )
        return total + value, d_shared, d_views

    total, d_shared, (dx, d_coefficients) = lax.fori_loop(0, plan.num_chunks, body, init)
    d_shared = d_shared._replace(w=d_shared.w.astype(shared.w.dtype))
    return total, unchunked(dx, plan), unchunked(d_coefficients, plan), d_shared


weighted_sum.defjvp(_weighted_sum_jvp, symbolic_zeros=True)


def per_token(plan: Plan, rows: Rows, shared: Shared) -> Array:
    """`[tokens]` losses for `reduction="none"`: a loop over chunks, each checkpointed.

    One plan on every platform (the CPU plan): a platform switch would keep
    both plans' residuals in reverse mode.
    """
    rows = _views(rows, plan)
    # Closed over inside `shard_map`, `w` and the class vectors are typed on the
    # outer mesh; as varying values of the body they are typed on its own.
    shared = vary_like(shared, rows)

    @jax.checkpoint
    def chunk_losses(chunk_rows):
        return _row_losses(_uncapped_logits(chunk_rows.x, shared), chunk_rows, shared)

    def body(c, losses):
        return write_chunk(losses, chunk_losses(take_chunk(rows, c)), c)

    dtype = compute_dtype(rows.x.dtype)
    zeros = vary_like(zeros_like(rows.coefficients, dtype), (rows, shared))
    losses = lax.fori_loop(0, plan.num_chunks, body, zeros)
    return unchunked(losses, plan)
