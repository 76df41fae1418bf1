"""The floor of a softmax-family loss: what any implementation must at least do.

Measured on every machine (`CASES`, added to the softmax families' cases):

* `floor/reduce/fwd`: one jitted pass that reads the logits and reduces each
  row (max and sum of exp, float32 accumulation): the floor of a forward pass;
* `floor/write/fwd`: one jitted pass that reads them and writes a logits-shaped
  array in their dtype (`exp(z − c)`; a plain copy is not a floor on CPU,
  where its page faults make it slower). The floor of `value_and_grad` is the
  sum of both.

On an accelerator, also the HBM floor (`hbm_records`): bytes moved divided by
the device's copy bandwidth, measured with a large jitted elementwise pass
(`copy_bandwidth`, `x * 2` on 2 GiB): one read of the logits for `fwd`, one
read plus one read-and-write (the gradient) for `value_and_grad`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from benchmarks import harness
from benchmarks.shapes import DTYPES

COPY_BYTES = 2 << 30
"""Size of the array whose jitted `x * 2` measures the copy bandwidth (2 GiB).

Large enough that the call's fixed cost (tens of microseconds) is a few
percent of the ~1 ms the pass takes on a GPU.
"""


def floor_reduce(logits: jax.Array, *_: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reads the logits once per row statistic: max, then the sum of exp in float32.

    Written as fast as we know how on XLA:CPU: the max in the logits' dtype
    (so the float32 convert is fused into the sum), and rows longer than
    32768 summed in pieces (its library reduction slows down past that).
    """
    row_max = jnp.max(logits, axis=-1).astype(jnp.float32)
    num_classes = logits.shape[-1]
    pieces = next(
        (p for p in range(1, 65) if num_classes % p == 0 and num_classes // p <= 32768), 1
    )
    if pieces == 1:
        return row_max, jnp.sum(jnp.exp(logits.astype(jnp.float32) - row_max[:, None]), axis=-1)
    split = logits.reshape(logits.shape[0], pieces, -1)
    split, shift = jax.lax.optimization_barrier((split, row_max))
    partial = jnp.sum(jnp.exp(split.astype(jnp.float32) - shift[:, None, None]), axis=-1)
    return row_max, jnp.sum(jax.lax.optimization_barrier(partial), axis=-1)


def floor_write(logits: jax.Array, *_: jax.Array) -> jax.Array:
    """Reads the logits and writes `exp(z − c)` in their dtype, one value per element.

    `c` differs per row (an iota, not read from memory) so that the pass cannot
    be folded into a constant or a copy.
    """
    shift = 1e-3 * jax.lax.broadcasted_iota(jnp.float32, (logits.shape[0], 1), 0)
    return jnp.exp(logits.astype(jnp.float32) - shift).astype(logits.dtype)


CASES: dict[str, harness.Case] = {
    "floor/reduce/fwd": floor_reduce,
    "floor/write/fwd": floor_write,
}
"""The measured floor, as cases of a family whose first input is the logits."""


def copy_bandwidth(device: jax.Device, *, nbytes: int = COPY_BYTES, repeats: int = 10) -> float:
    """Bytes per second that one jitted elementwise pass reads plus writes on `device`.

    Times `x * 2` on a float32 array of `nbytes`: it reads and writes every
    byte once, as fast as XLA streams memory. The fastest of `repeats` calls
    counts (noise only ever slows a call down).
    """
    x = jnp.ones((nbytes // 4,), jnp.float32, device=device)
    (record,) = harness.measure_cases({"copy": lambda x: x * 2}, (x,), repeats=repeats, warmup=2)
    return 2 * x.nbytes / record["min_s"]


def hbm_records(records: Sequence[harness.Record], bandwidth: float) -> list[harness.Record]:
    """The HBM floor of every shape and dtype that has a measured floor in `records`.

    For each `floor/reduce/fwd` record: `floor/hbm/fwd` (one read of the
    logits) and `floor/hbm/value_and_grad` (one read plus one read-and-write),
    with their times as bytes / `bandwidth` and `bandwidth_bytes_per_s` added.
    """
    out = []
    for record in records:
        if record["case"] != "floor/reduce/fwd":
            continue
        logits_bytes = record["batch"] * record["classes"] * DTYPES[record["dtype"]].itemsize
        for mode, passes in ((harness.FWD, 1), (harness.VALUE_AND_GRAD, 3)):
            seconds = passes * logits_bytes / bandwidth
            out.append(
                {
                    **record,
                    "case": f"floor/hbm/{mode}",
                    "impl": "hbm",
                    "mode": mode,
                    "compile_s": 0.0,
                    **dict.fromkeys(("temp_bytes", "argument_bytes", "output_bytes")),
                    **dict.fromkeys(("min_s", "median_s", "p10_s", "p90_s"), seconds),
                    "value": None,
                    "bandwidth_bytes_per_s": bandwidth,
                }
            )
    return out
