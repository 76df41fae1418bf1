"""XLA:CPU forms of the fused loss's weight-gradient update (see `_sweep.ChunkForm`).

The generic form (`_sweep.py`) adds each chunk's `xᵀ @ dz` to a gradient in
`w`'s dtype with one product, which GPU and TPU compilers fuse into the matmul.
XLA:CPU does not fuse it, so here the gradient accumulates in float32 (no
rounding per chunk; the CPU plan's chunk count is chosen for CPU caches) and
each chunk's product is formed a block of hidden rows at a time. Measured on a
2-core AMD EPYC (jax 0.10.2), recorded in `docs/performance.md`.
"""

import jax.numpy as jnp
from jax import lax

from jwxent._fused_linear._chunks import explicit_sharding, zeros_like
from jwxent._numerics import compute_dtype
from jwxent._typing import Array

# The weight gradient of a chunk is added this many blocks of hidden rows at a time.
WEIGHT_BLOCKS = 8


def weight_gradient_zeros(w: Array) -> Array:
    """A float32 (compute-dtype) accumulator for the `[hidden, vocab]` weight gradient."""
    return zeros_like(w, compute_dtype(w.dtype))


def transposed_apart(x: Array) -> Array:
    """`xᵀ` behind a barrier.

    XLA:CPU folds a transpose into a product, and its library product takes
    half precision only for a row-major left operand; folded, the product of
    bf16 `xᵀ` runs on float32 converts, and the convert of `x` is moved in
    front of the loop's slice: a float32 copy of all of `x` (32 MiB at
    8192 × 1024, an eighth of the loss's bf16 temporaries).
    """
    if x.dtype == compute_dtype(x.dtype):
        return x.T  # a float32 product folds the transpose at no cost
    return lax.optimization_barrier(x.T)


def add_weight_gradient(dw: Array, x: Array, du: Array) -> Array:
    """`dw + xᵀ @ du` for float32 `[hidden, vocab]` `dw`, a block of hidden rows at a time.

    `x`: `[t, hidden]` and `du`: `[t, vocab]`, both in the inputs' dtype.
    One `[hidden, vocab]` product would be a second gradient-sized buffer next
    to the accumulator; a block of rows of it is a fraction of one, added in
    place. The blocks run in a loop: unrolled, XLA computes every block's
    product before the first update, and all of them are alive at once.
    Blocks of the hidden axis leave the vocabulary axis whole, so `w` may be
    sharded along it. The last block is shorter when the blocks do not divide
    the hidden size.
    """
    hidden = dw.shape[0]
    rows = -(-hidden // WEIGHT_BLOCKS)
    x_t = transposed_apart(x)

    def add_block(start, dw, size=rows):
        block = lax.dynamic_slice_in_dim(dw, start, size, axis=0)
        part = jnp.matmul(
            lax.dynamic_slice_in_dim(x_t, start, size, axis=0),
            du,
            preferred_element_type=dw.dtype,
            out_sharding=explicit_sharding(block),
        )
        return lax.dynamic_update_slice_in_dim(dw, block + part, start, axis=0)

    full_blocks = hidden // rows
    dw = lax.fori_loop(0, full_blocks, lambda b, dw: add_block(b * rows, dw), dw)
    if hidden % rows:  # the last, shorter block
        dw = add_block(full_blocks * rows, dw, size=hidden % rows)
    return dw
