"""How the fused loss cuts the tokens into chunks: a static plan and its views.

Chunk `c` holds the *strided* tokens `i·num_chunks + c`: `[tokens, ...]` is
viewed as `[chunk, num_chunks, ...]` by a reshape, without a copy. With the
tokens sharded over devices, that sharding lands on the within-chunk axis, so
every device works on its own rows of every chunk.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType

from jwxent._typing import Array

# A chunk of at most 1/16 of the tokens, at least 8 tokens, and about this
# many float32 logits: 2^24 (64 MiB) for float32 inputs, where fewer, larger
# chunks read and write the `[hidden, vocab]` weight gradient fewer times
# (8192 x 1024 x 32000: 1.16x the unfused time with 2^22, 0.91x with 2^24);
# 2^22 (16 MiB) for half-precision inputs, whose float32 accumulator of that
# gradient already takes most of the memory bar (1/8 of the unfused loss's).
_CHUNK_ELEMENTS = 2**24
_HALF_PRECISION_CHUNK_ELEMENTS = 2**22
_MIN_NUM_CHUNKS = 16
_MIN_CHUNK = 8

# The fewest chunks on GPUs, and on TPUs for 4-byte and for half-precision
# inputs (see `accelerator_plan`) ...
GPU_CHUNKS = 8
TPU_CHUNKS = 16
TPU_HALF_PRECISION_CHUNKS = 24
# ... and the most tokens per chunk on each.
GPU_MAX_CHUNK = 4096
TPU_MAX_CHUNK = 1024

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


def make_plan(num_tokens: int, vocab: int, chunk_size: int | None, dtype: jnp.dtype) -> Plan:
    """Chunks of `chunk_size` tokens or about `_CHUNK_ELEMENTS` logits, evenly filled.

    `dtype` is the inputs' (`x` and `w`) dtype.

    By default a chunk of a multiple of 8 tokens that divides the tokens is
    preferred (no padding: XLA:CPU pads and reorders bf16 arrays in float32,
    which would write out a float32 copy of `x`), down to half the target.
    """
    elements = _CHUNK_ELEMENTS if jnp.dtype(dtype).itemsize >= 4 else _HALF_PRECISION_CHUNK_ELEMENTS
    by_memory = elements // max(vocab, 1)
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


def accelerator_plan(num_tokens: int, chunk_size: int | None, num_chunks: int) -> Plan:
    """`num_chunks` chunks of a multiple of 8 tokens (or chunks of `chunk_size` tokens).

    The traffic model (docs/performance.md): each chunk reads `w` twice and
    reads and writes the `[hidden, vocab]` weight gradient once, `4·H·V·b`
    bytes, on top of the logits' own traffic, which does not depend on the
    chunks. So the fewest chunks whose temporaries stay within 1/8 of the
    unfused loss's win:

    * GPU (`GPU_CHUNKS`): a chunk's temporaries are its logits in the inputs'
      dtype, which their gradient overwrites, `T·V·b/n`, against the unfused
      loss's float32 logits and more (`4·T·V` bytes in bf16, `8·T·V` in f32):
      8 chunks keep 1/16 of it. Past 32768 tokens, chunks of 4096 tokens
      (`GPU_MAX_CHUNK`), so that a chunk's logits stay a bounded array (at
      4M tokens, 8 chunks would each hold 2^34 logits, past int32 indexing);
      they still do 6·4096 flops per `4·H·V·b` bytes of weight traffic, far
      above the GPU's ratio of peak flops to bandwidth.
    * TPU: the gradient of the logits is fused into the two matmuls that read
      it, but the compiler lays the strided chunks out anew: up to two
      `[T, H]` copies (of `x` and of `dx`, a third with padding tokens) on
      top of the chunk's logits, against one `[T, V]` logits array of the
      unfused loss. In half precision that takes 24 chunks
      (`TPU_HALF_PRECISION_CHUNKS`); in float32, where each chunk's weight
      traffic costs twice as much, 16; and chunks of at most 1024 tokens
      (`TPU_MAX_CHUNK`), which still do 6·1024 flops per byte of weight
      traffic, well above the TPU's ratio of peak flops to bandwidth.

    Neither count depends on the vocabulary or the hidden size: the bars
    scale with both alike, up to the `[T, H]` copies (`H/V ≈ 1/32` at the
    sizes measured).
    """
    if chunk_size is not None or num_tokens <= _MIN_CHUNK:
        return make_plan(num_tokens, 1, chunk_size or max(num_tokens, 1), jnp.float32)
    chunk = -(-num_tokens // num_chunks)
    chunk = max(_MIN_CHUNK, -(-chunk // _MIN_CHUNK) * _MIN_CHUNK)
    return Plan(num_tokens, chunk, -(-num_tokens // chunk))


def gpu_chunks(num_tokens: int) -> int:
    """The GPU plan's number of chunks for `num_tokens` tokens."""
    return max(GPU_CHUNKS, -(-num_tokens // GPU_MAX_CHUNK))


def tpu_chunks(num_tokens: int, dtype: jnp.dtype) -> int:
    """The TPU plan's number of chunks for `num_tokens` inputs of `dtype`."""
    base = TPU_CHUNKS if jnp.dtype(dtype).itemsize >= 4 else TPU_HALF_PRECISION_CHUNKS
    return max(base, -(-num_tokens // TPU_MAX_CHUNK))


def chunked(a: Array, plan: Plan, fill: bool | int = 0) -> Array:
    """`[tokens, ...]` -> `[chunk, num_chunks, ...]`; chunk `c` is `[:, c]`, the tokens
    `i·num_chunks + c`. A reshape, no copy (but padding tokens, which are `fill`).
    """
    if plan.padding:
        a = jnp.concatenate([a, jnp.full((plan.padding, *a.shape[1:]), fill, a.dtype)])
    return a.reshape(plan.chunk, plan.num_chunks, *a.shape[1:])


def unchunked(a: Array, plan: Plan) -> Array:
    """The inverse of `_chunked` for per-token results."""
    return a.reshape(plan.chunk * plan.num_chunks, *a.shape[2:])[: plan.num_tokens]


def take_chunk(views, c: Array):
    """Chunk `c` of every `[chunk, num_chunks, ...]` view in a pytree (None stays)."""
    return jax.tree.map(lambda v: lax.dynamic_index_in_dim(v, c, axis=1, keepdims=False), views)


def write_chunk(view: Array, part: Array, c: Array) -> Array:
    """`view` with chunk `c` replaced by `part` (in place inside a loop)."""
    update = lax.expand_dims(part.astype(view.dtype), (1,))
    sharding = explicit_sharding(view)
    if sharding is not None:
        update = jax.sharding.reshard(update, sharding)
    return lax.dynamic_update_index_in_dim(view, update, c, axis=1)


def zeros_like(a: Array, dtype: jnp.dtype | None = None) -> Array:
    """Zeros of `a`'s shape, laid out like `a` when its mesh has `Explicit` axes.

    Otherwise the zeros carry no sharding: inside `shard_map` a closed-over
    array's sharding names the outer mesh, which the body's cannot take.
    """
    sharding = explicit_sharding(a)
    if sharding is None:
        return jnp.zeros(a.shape, dtype or a.dtype)
    return jnp.zeros(a.shape, dtype or a.dtype, out_sharding=sharding)


def explicit_sharding(like: Array) -> jax.sharding.NamedSharding | None:
    """The sharding of `like` when its mesh has `Explicit` axes (sharding in types)."""
    sharding = jax.typeof(like).sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or AxisType.Explicit not in mesh.axis_types:
        return None
    return sharding
