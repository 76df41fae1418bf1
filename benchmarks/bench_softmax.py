"""Softmax cross-entropy: jwxent against optax, a naive `jnp` loss and the floor.

Every loss is class-weighted with `reduction="weighted_mean"` (PyTorch's
`F.cross_entropy(weight=...)`) and timed as `value_and_grad` (`"vg"`) and, for
the main loss, forward only (`"fwd"`):

| loss | jwxent | compared with |
| --- | --- | --- |
| `int` | `softmax_cross_entropy_with_integer_labels(class_weights=cw)` | optax's integer-label loss weighted by `cw[labels]` by hand; a naive one-hot `log_softmax` |
| `smooth` | the same with `label_smoothing=0.1` | optax's `softmax_cross_entropy` on `cw ·` smoothed one-hot targets |
| `zloss` | the same with `z_loss=1e-4` | optax's loss plus `cw[y]·1e-4·logsumexp²` by hand |
| `soft` | `softmax_cross_entropy(class_weights=cw)` on probability labels | optax's `softmax_cross_entropy` on `cw · q` |

The floor is what any implementation must at least do: `floor/reduce`, one
jitted pass that reads the logits and reduces each row (max and sum of exp,
float32 accumulation), and `floor/write`, one jitted pass that reads them and
writes a logits-shaped array in their dtype (`exp(z − c)`; a plain copy is not
a floor on CPU, where its page faults make it slower). The floor of a forward
pass is `floor/reduce`; of `value_and_grad`, the sum of both.

All cases of one shape and dtype are timed round-robin in one `measure_cases`
call, so they share the machine's noise. Case names are `loss/impl/mode`.
"""

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import jwxent
from benchmarks import harness
from benchmarks.shapes import DTYPES, Shape

LABEL_SMOOTHING = 0.1
Z_LOSS = 1e-4
LOSSES = ("int", "smooth", "zloss", "soft")


def make_inputs(shape: Shape, dtype: jnp.dtype, seed: int = 0) -> tuple[jax.Array, ...]:
    """`(logits, labels, class_weights, soft_labels)` for `shape`; logits in `dtype`."""
    k_logits, k_labels, k_weights, k_soft = jax.random.split(jax.random.key(seed), 4)
    logits = 2.0 * jax.random.normal(k_logits, shape.logits_shape, jnp.float32)
    labels = jax.random.randint(k_labels, (shape.batch,), 0, shape.classes)
    class_weights = jax.random.uniform(k_weights, (shape.classes,), jnp.float32, 0.5, 2.0)
    soft = jax.nn.softmax(jax.random.normal(k_soft, shape.logits_shape, jnp.float32), axis=-1)
    return logits.astype(dtype), labels, class_weights, soft


def _weighted_mean(per_example: jax.Array, weight: jax.Array) -> jax.Array:
    return jnp.sum(weight * per_example.astype(jnp.float32)) / jnp.sum(weight)


# --- jwxent ---------------------------------------------------------------


def jwxent_int(logits, labels, cw, soft, **options):
    del soft
    return jwxent.softmax_cross_entropy_with_integer_labels(
        logits, labels, class_weights=cw, reduction="weighted_mean", **options
    )


def jwxent_soft(logits, labels, cw, soft):
    del labels
    return jwxent.softmax_cross_entropy(logits, soft, class_weights=cw, reduction="weighted_mean")


# --- optax with the same weighting by hand --------------------------------


def optax_int(logits, labels, cw, soft):
    del soft
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return _weighted_mean(per_example, cw[labels])


def optax_smooth(logits, labels, cw, soft):
    del soft
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), LABEL_SMOOTHING)
    per_example = optax.softmax_cross_entropy(logits, (targets * cw).astype(logits.dtype))
    return _weighted_mean(per_example, cw[labels])


def optax_zloss(logits, labels, cw, soft):
    del soft
    lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return _weighted_mean(per_example.astype(jnp.float32) + Z_LOSS * lse**2, cw[labels])


def optax_soft(logits, labels, cw, soft):
    del labels
    per_example = optax.softmax_cross_entropy(logits, (soft * cw).astype(logits.dtype))
    return jnp.sum(per_example.astype(jnp.float32)) / jnp.sum(soft @ cw)


# --- naive ----------------------------------------------------------------


def naive_int(logits, labels, cw, soft):
    """What one writes without thinking: a one-hot times `log_softmax`."""
    del soft
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    per_example = -jnp.sum(one_hot * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    return _weighted_mean(per_example, cw[labels])


# --- floor ----------------------------------------------------------------


def floor_reduce(logits, labels, cw, soft):
    """Reads the logits once per row statistic: max, then the sum of exp in float32.

    Written as fast as we know how on XLA:CPU: the max in the logits' dtype
    (so the float32 convert is fused into the sum), and rows longer than
    32768 summed in pieces (its library reduction slows down past that).
    """
    del labels, cw, soft
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


def floor_write(logits, labels, cw, soft):
    """Reads the logits and writes `exp(z − c)` in their dtype, one value per element."""
    del cw, soft
    shift = 1e-3 * labels.astype(jnp.float32)
    return jnp.exp(logits.astype(jnp.float32) - shift[:, None]).astype(logits.dtype)


def _with(loss: Callable[..., jax.Array], **options: Any) -> Callable[..., jax.Array]:
    def bound(*args):
        return loss(*args, **options)

    return bound


def cases(losses: Iterable[str] = LOSSES) -> dict[str, Callable[..., Any]]:
    """The timed functions of `(logits, labels, class_weights, soft_labels)`, by case name."""
    vg = harness.value_and_grad
    table: dict[str, Callable[..., Any]] = {}
    if "int" in losses:
        for impl, loss in (("jwxent", jwxent_int), ("optax", optax_int), ("naive", naive_int)):
            table[f"int/{impl}/vg"] = vg(loss)
            table[f"int/{impl}/fwd"] = loss
        table["floor/reduce/fwd"] = floor_reduce
        table["floor/write/fwd"] = floor_write
    extra = {
        "smooth": (_with(jwxent_int, label_smoothing=LABEL_SMOOTHING), optax_smooth),
        "zloss": (_with(jwxent_int, z_loss=Z_LOSS), optax_zloss),
        "soft": (jwxent_soft, optax_soft),
    }
    for name, (ours, theirs) in extra.items():
        if name in losses:
            table[f"{name}/jwxent/vg"] = vg(ours)
            table[f"{name}/optax/vg"] = vg(theirs)
    return table


def run(
    shapes: Iterable[Shape],
    dtypes: Iterable[str] = tuple(DTYPES),
    *,
    losses: Iterable[str] = LOSSES,
    repeats: int = 3,
    warmup: int = 1,
    progress: Callable[[str], None] | None = None,
) -> list[harness.Record]:
    """Measures every case at every shape and dtype; one record per case.

    Each record is a `measure_cases` record plus `benchmark`, `shape`, `batch`,
    `classes`, `dtype`, `loss`, `impl` and `mode`.
    """
    table = cases(tuple(losses))
    records = []
    for shape in shapes:
        for dtype_name in dtypes:
            if progress is not None:
                progress(f"{shape.name} {dtype_name}: {len(table)} cases")
            args = make_inputs(shape, DTYPES[dtype_name])
            for record in harness.measure_cases(table, args, repeats=repeats, warmup=warmup):
                loss, impl, mode = record["case"].split("/")
                records.append(
                    {
                        "benchmark": "softmax",
                        "shape": shape.name,
                        "batch": shape.batch,
                        "classes": shape.classes,
                        "dtype": dtype_name,
                        "loss": loss,
                        "impl": impl,
                        "mode": mode,
                        **record,
                    }
                )
            del args
    return records
