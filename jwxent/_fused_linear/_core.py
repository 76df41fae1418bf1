"""The streamed custom-VJP core of `linear_softmax_cross_entropy`.

Like the core of `_softmax.py`, it returns per-row statistics of the logits
`z = cap(x @ w + bias)`, which are never stored whole:

* `lse = logsumexp(z)`,
* `picked = z[label]`,
* `dot = Σ_k t_k z_k` for the label-smoothing target `t` (class weights or ones),
* `picked_weight = c[label]`, the class weight of the label,

and `_loss.py` builds the loss from them in plain JAX on `[tokens]` vectors.

The core cuts the vocabulary into blocks of `chunk` columns. The forward pass
keeps a running log-sum-exp over the blocks; the backward pass recomputes each
block's logits, forms `dz = g_lse·softmax(z) + g_picked·onehot + g_dot·t`, adds
`dz @ w_blockᵀ` to `dx` and writes `dw_block = xᵀ @ dz`. Only one block of
logits is alive at a time, so temp memory is O(tokens × chunk) in both passes.

Block `b` holds the *strided* columns `a·num_chunks + b` (`a < chunk`), not a
contiguous range: `w[:, :chunk·num_chunks]` is viewed as
`[hidden, chunk, num_chunks]` and the loop walks the last axis. When `w` is
sharded along the vocabulary, that sharding lands on the `chunk` axis, so every
device computes its own part of every block and only `[tokens]` vectors (block
max, sum of exponentials, picked logit) cross devices: vocabulary parallelism
under plain `jit`, with no all-gather of `w` or of the logits. Columns past
`chunk·num_chunks` (fewer than `chunk`) form one contiguous tail block.
"""

import dataclasses
import functools
from typing import cast

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType

from jwxent._softmax import compute_dtype
from jwxent._typing import Array

# The default chunk keeps one block of float32 logits near 32 MiB and at most
# 1/16 of the whole logits, with at least 128 columns for efficient matmuls.
_BLOCK_ELEMENTS = 2**23
_MIN_NUM_CHUNKS = 16
_MIN_CHUNK = 128

# ---------------------------------------------------------------------------
# How the vocabulary is cut into blocks.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static layout of the vocabulary blocks and the logit transform.

    Attributes:
      vocab: number of columns of `w`.
      chunk: columns per strided block.
      num_chunks: number of strided blocks; they cover `chunk·num_chunks` columns.
      soft_cap: `c` of the logit soft cap `c·tanh(z/c)`, or None.
    """

    vocab: int
    chunk: int
    num_chunks: int
    soft_cap: float | None

    @property
    def strided(self) -> int:
        return self.chunk * self.num_chunks

    @property
    def tail(self) -> int:
        return self.vocab - self.strided


def _default_chunk_size(num_rows: int, vocab: int) -> int:
    """A chunk near the memory target, preferring divisors of `vocab` (no tail)."""
    by_memory = max(_MIN_CHUNK, _BLOCK_ELEMENTS // max(num_rows, 1))
    target = max(1, min(vocab, -(-vocab // _MIN_NUM_CHUNKS), by_memory))
    divisors = [d for d in range(target, target // 2, -1) if vocab % d == 0]
    aligned = [d for d in divisors if d % 8 == 0]
    return (aligned or divisors or [target])[0]


def make_plan(num_rows: int, vocab: int, chunk_size: int | None, soft_cap: float | None) -> Plan:
    chunk = _default_chunk_size(num_rows, vocab) if chunk_size is None else min(chunk_size, vocab)
    return Plan(vocab, chunk, vocab // chunk, soft_cap)


def _strided_view(a: Array, plan: Plan) -> Array:
    """`[..., vocab]` -> `[..., chunk, num_chunks]`; block `b` is `[..., b]`."""
    if plan.tail:
        a = a[..., : plan.strided]
    return a.reshape(a.shape[:-1] + (plan.chunk, plan.num_chunks))


def _tail(a: Array | None, plan: Plan) -> Array | None:
    return None if a is None else a[..., plan.strided :]


def _block(view: Array | None, b: Array) -> Array | None:
    return None if view is None else lax.dynamic_index_in_dim(view, b, axis=-1, keepdims=False)


def _strided_columns(plan: Plan, b: Array) -> Array:
    """Vocabulary index of each column of strided block `b`."""
    return lax.iota(jnp.int32, plan.chunk) * plan.num_chunks + b


def _tail_columns(plan: Plan) -> Array:
    return lax.iota(jnp.int32, plan.tail) + plan.strided


# ---------------------------------------------------------------------------
# One block of logits.
# ---------------------------------------------------------------------------


def _explicit_sharding(like: Array) -> jax.sharding.NamedSharding | None:
    """The sharding of `like` when its mesh has `Explicit` axes (sharding in types).

    There JAX asks where a result goes when it cannot tell (a product over a
    sharded axis, an update of a sharded buffer); it goes where the array it
    accumulates into lives (`x` for `dx`, a block of `w` for `dw`). With
    `Auto` axes (None here) XLA's sharding propagation decides.
    """
    sharding = jax.typeof(like).sharding
    return sharding if AxisType.Explicit in sharding.mesh.axis_types else None


def _matmul(a: Array, b: Array, like: Array, dtype: jnp.dtype) -> Array:
    """`a @ b` accumulated in `dtype`, sharded like `like` under sharding in types."""
    out_sharding = _explicit_sharding(like)
    return jnp.matmul(a, b, preferred_element_type=dtype, out_sharding=out_sharding)


def _block_logits(x: Array, w_block: Array, bias_block: Array | None, plan: Plan) -> Array:
    """`[rows, columns]` logits of one block in the compute dtype (f32 for bf16)."""
    dtype = compute_dtype(x.dtype)
    z = jnp.matmul(x, w_block, preferred_element_type=dtype)
    if bias_block is not None:
        z = z + bias_block.astype(dtype)[None, :]
    if plan.soft_cap is not None:
        z = plan.soft_cap * jnp.tanh(z / plan.soft_cap)
    return z


def _label_hits(columns: Array, labels: Array) -> Array:
    """Bool `[rows, columns]`: True where the column is the row's label; no gather."""
    return columns.astype(labels.dtype)[None, :] == labels[:, None]


def _pick(hits: Array, values: Array) -> Array:
    """Per row, the entry of `values` (`[rows, columns]` or `[columns]`) at the label."""
    return jnp.sum(jnp.where(hits, values, 0.0), axis=-1)


def _block_stats(z, hits, t_block, cw_block):
    """This block's `(lse, picked, dot, picked_weight)` contributions, each `[rows]`."""
    lse = jax.nn.logsumexp(z, axis=-1)
    zeros = jnp.zeros_like(lse)
    dot = zeros if t_block is None else _matmul(z, t_block.astype(z.dtype), lse, z.dtype)
    picked_weight = zeros if cw_block is None else _pick(hits, cw_block.astype(z.dtype))
    return lse, _pick(hits, z), dot, picked_weight


def _block_cotangents(z, hits, t_block, lse, cotangents, plan, with_label_weights):
    """`(dlogits, dt_block, dcw_block)` of one block: softmax minus target, and more."""
    g_lse, g_picked, g_dot, g_weight = cotangents
    # Probabilities are recomputed from the block's logits and the saved lse.
    dz = g_lse[:, None] * jnp.exp(z - lse[:, None])
    dz = dz + jnp.where(hits, g_picked[:, None], 0.0)
    dt_block = None
    if t_block is not None:
        dz = dz + g_dot[:, None] * t_block.astype(z.dtype)[None, :]
        dt_block = _matmul(g_dot, z, t_block, z.dtype)
    if plan.soft_cap is not None:
        # d/du c·tanh(u/c) = 1 − tanh² = 1 − (z/c)².
        dz = dz * (1.0 - jnp.square(z / plan.soft_cap))
    dcw_block = None
    if with_label_weights:
        dcw_block = jnp.sum(jnp.where(hits, g_weight[:, None], 0.0), axis=0)
    return dz, dt_block, dcw_block


# ---------------------------------------------------------------------------
# The custom-VJP core.
# ---------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _linear_stats(
    plan: Plan,
    x: Array,
    w: Array,
    bias: Array | None,
    labels: Array,
    targets: Array | None,
    label_weights: Array | None,
) -> tuple[Array, Array, Array, Array]:
    """Per-row `(lse, picked, dot, picked_weight)` of the logits `cap(x @ w + bias)`.

    Args:
      plan: static block layout and soft cap.
      x: `[rows, hidden]` floating point.
      w: `[hidden, vocab]`, the dtype of `x`.
      bias: `[vocab]` floating point, or None.
      labels: integer `[rows]` within `[0, vocab)`.
      targets: `[vocab]` smoothing target `t`, or None (then `dot` is zeros).
      label_weights: `[vocab]` class weights, picked at the label like the
        logits (so that, like `w`, they may be sharded along the vocabulary),
        or None (then `picked_weight` is zeros).

    Returns:
      Four `[rows]` arrays in the compute dtype.
    """
    return _linear_stats_fwd(plan, x, w, bias, labels, targets, label_weights)[0]


def _views(plan: Plan, *vectors: Array | None) -> list[Array | None]:
    return [None if a is None else _strided_view(a, plan) for a in vectors]


def _linear_stats_fwd(plan, x, w, bias, labels, targets, label_weights):
    w_view, b_view, t_view, cw_view = _views(plan, w, bias, targets, label_weights)

    def add_block(stats, w_block, bias_block, columns, t_block, cw_block):
        z = _block_logits(x, w_block, bias_block, plan)
        block = _block_stats(z, _label_hits(columns, labels), t_block, cw_block)
        lse, *sums = stats
        return (
            jnp.logaddexp(lse, block[0]),
            *(total + part for total, part in zip(sums, block[1:], strict=True)),
        )

    def body(b, stats):
        w_block, bias_block, t_block, cw_block = (
            _block(view, b) for view in (w_view, b_view, t_view, cw_view)
        )
        return add_block(stats, w_block, bias_block, _strided_columns(plan, b), t_block, cw_block)

    # Derived from `x` so that, under sharding in types, the carry keeps its sharding.
    zeros = jnp.zeros_like(x[:, 0], dtype=compute_dtype(x.dtype))
    init = (jnp.full_like(zeros, -jnp.inf), zeros, zeros, zeros)
    stats = lax.fori_loop(0, plan.num_chunks, body, init)
    if plan.tail:
        w_tail, bias_tail, t_tail, cw_tail = (
            _tail(a, plan) for a in (w, bias, targets, label_weights)
        )
        stats = add_block(stats, w_tail, bias_tail, _tail_columns(plan), t_tail, cw_tail)
    # Residuals: the inputs themselves and one lse per row; logits are recomputed.
    return stats, (x, w, bias, labels, targets, label_weights, stats[0])


def _linear_stats_bwd(plan, residuals, cotangents):
    x, w, bias, labels, targets, label_weights, lse = residuals
    dtype = lse.dtype
    w_view, b_view, t_view = _views(plan, w, bias, targets)

    def block_grads(w_block, bias_block, columns, t_block):
        """`(dx part, dw_block, dbias_block, dt_block, dcw_block)` of one block."""
        z = _block_logits(x, w_block, bias_block, plan)
        hits = _label_hits(columns, labels)
        dz, dt_block, dcw_block = _block_cotangents(
            z, hits, t_block, lse, cotangents, plan, label_weights is not None
        )
        dz_in = dz.astype(x.dtype)  # matmul operands in the input dtype, f32 accumulation
        dx_part = _matmul(dz_in, w_block.T, x, dtype)
        dw_block = _matmul(x.T, dz_in, w_block, dtype)
        dbias_block = None if bias is None else jnp.sum(dz, axis=0)
        return dx_part, dw_block, dbias_block, dt_block, dcw_block

    def body(b, carry):
        dx, *views = carry
        dx_part, *blocks = block_grads(
            _block(w_view, b), _block(b_view, b), _strided_columns(plan, b), _block(t_view, b)
        )
        views = [_write(view, block, b) for view, block in zip(views, blocks, strict=True)]
        return (dx + dx_part, *views)

    init = (jnp.zeros_like(x, dtype=dtype), *map(_zeros_like, _views(plan, w, bias)))
    init += tuple(_zeros_like(v, dtype) for v in _views(plan, targets, label_weights))
    dx, *grads = lax.fori_loop(0, plan.num_chunks, body, init)
    grads = [_unview(view, plan) for view in grads]
    if plan.tail:
        dx_part, *tails = block_grads(
            _tail(w, plan), _tail(bias, plan), _tail_columns(plan), _tail(targets, plan)
        )
        dx = dx + dx_part
        grads = [_append(a, tail) for a, tail in zip(grads, tails, strict=True)]
    dw, dbias, dt, dcw = (
        None if g is None else g.astype(a.dtype)
        for g, a in zip(grads, (w, bias, targets, label_weights), strict=True)
    )
    return dx.astype(x.dtype), dw, dbias, None, dt, dcw


def _zeros_like(a: Array | None, dtype: jnp.dtype | None = None) -> Array | None:
    return None if a is None else jnp.zeros_like(a, dtype=dtype)


def _write(view: Array | None, block: Array | None, b: Array) -> Array | None:
    """Writes block `b` into its strided view (in place inside the loop)."""
    if view is None or block is None:
        return view
    update = lax.expand_dims(block.astype(view.dtype), (view.ndim - 1,))
    sharding = _explicit_sharding(view)
    if sharding is not None:
        update = jax.sharding.reshard(update, sharding)
    return lax.dynamic_update_slice_in_dim(view, update, b, axis=-1)


def _unview(view: Array | None, plan: Plan) -> Array | None:
    return None if view is None else view.reshape(view.shape[:-2] + (plan.strided,))


def _append(a: Array | None, tail: Array | None) -> Array | None:
    if a is None or tail is None:
        return a
    return jnp.concatenate([a, tail.astype(a.dtype)], axis=-1)


_linear_stats.defvjp(_linear_stats_fwd, _linear_stats_bwd)


def linear_logit_stats(
    plan: Plan,
    x: Array,
    w: Array,
    bias: Array | None,
    labels: Array,
    targets: Array | None,
    label_weights: Array | None,
) -> tuple[Array, Array, Array, Array]:
    """`(lse, picked, dot, picked_weight)` per row, differentiable by the custom VJP."""
    stats = _linear_stats(plan, x, w, bias, labels, targets, label_weights)
    return cast(tuple[Array, Array, Array, Array], stats)
