"""Runs every registered loss on 8 simulated CPU devices; writes one JSON file.

Started by `tests/test_sharding.py` in a subprocess, because the device count
is fixed when JAX starts:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python -m tests._sharding_worker OUT.json LOSS_NAME [LOSS_NAME ...]

For every loss of `tests/_registry.py` (its `"everything"` variant: weights,
class weights, masks, smoothing, ...), it records the value of every reduction
and the gradients of their sum on one device, then the same:

* under `jit` with sharded inputs, on a 2×4 `("data", "model")` mesh with
  `Auto` axes (sharding propagation) and with `Explicit` axes (sharding in
  types), in three layouts: `"data"` (the batch over all 8 devices),
  `"class"` (the class axis over all 8) and `"both"` (the batch over
  `"data"`, the classes over `"model"`, as in Megatron's vocabulary-parallel
  cross-entropy), with the result shapes of the compiled program's
  all-gathers;
* inside `jax.shard_map` (default `check_vma`) with the batch over all 8
  devices: the per-example losses, summed outside, with the per-class inputs
  as arguments and closed over (`"shard_map/closed"`); and, for the
  integer-label losses, replicated logits against sharded labels.

The test compares them; this script only computes.
"""

import json
import re
import sys
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from tests import _registry as registry

BATCH, CLASSES = 32, 160
"""Distinct sizes, so that a collective's shape tells which axis it carries.

Per device the batch axis is 32, 16 or 4 long and the class axis 160, 40 or
20; the fused loss's hidden size is `registry.HIDDEN` (6).
"""
EVERY_DEVICE = ("data", "model")
LAYOUTS = {
    "data": {"batch": EVERY_DEVICE, "class": None},
    "class": {"batch": None, "class": EVERY_DEVICE},
    "both": {"batch": "data", "class": "model"},
}
# With `Auto` axes XLA propagates one sharding for all layouts alike: the
# batch alone and the batch with the classes; `Explicit` axes type every one.
LAYOUTS_BY_AXIS_TYPE = {AxisType.Auto: ("data", "both"), AxisType.Explicit: tuple(LAYOUTS)}


# The integer-label softmax losses, also run with replicated logits and sharded labels.
REPLICATED_LOGITS = (
    "softmax_cross_entropy_with_integer_labels",
    "softmax_focal_loss_with_integer_labels",
)


def _logical_axes(shape: tuple[int, ...]) -> tuple[str | None, ...]:
    """Which logical axis each dimension of an input is, from its size."""
    names = {BATCH: "batch", CLASSES: "class"}
    return tuple(names.get(n) for n in shape)


def _spec(shape: tuple[int, ...], layout: str) -> P:
    """The input's sharding; an axis that appears twice (a cost matrix) is replicated."""
    logical = _logical_axes(shape)
    axes = LAYOUTS[layout]
    return P(*(None if a is None or logical.count(a) > 1 else axes[a] for a in logical))


def _values(loss: registry.Loss) -> dict[str, Any]:
    values = registry.call_values(loss, "everything", loss.make(0, (BATCH,), CLASSES))
    return {
        k: v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float64 else v
        for k, v in values.items()
    }


def reductions(loss: registry.Loss) -> tuple[str, ...]:
    """The reductions a loss is checked with under sharding.

    Every loss ends in the one `_reduction.finish` (the fused loss's scalar
    reductions in `_reduction.coefficients`): those two losses run with every
    reduction, the others with the per-example losses and the weighted mean.
    """
    if loss.name in ("softmax_cross_entropy_with_integer_labels", "linear_softmax_cross_entropy"):
        return registry.REDUCTIONS
    return ("none", "weighted_mean")


def _evaluate(loss: registry.Loss, values: dict[str, Any], *, with_sum: bool):
    """`arrays -> (reductions, gradients of the scalar ones' sum[, of "sum"])`."""
    arrays = {k: v for k, v in values.items() if isinstance(v, np.ndarray)}
    static = {k: v for k, v in values.items() if k not in arrays}
    names = registry.differentiable(values)
    checked = reductions(loss)
    scalars = tuple(r for r in checked if r != "none")

    def run(arrays):
        merged = {**arrays, **static}
        out = {r: registry.call(loss, merged, reduction=r) for r in checked}

        def total(floats, reductions=scalars):
            return sum(registry.call(loss, {**merged, **floats}, reduction=r) for r in reductions)

        floats = {n: arrays[n] for n in names}
        sum_grads = jax.grad(total)(floats, ("sum",)) if with_sum else {}
        return out, jax.grad(total)(floats), sum_grads

    return run, arrays


def _per_example_in_shard_map(loss: registry.Loss, values: dict[str, Any], mesh, closed: bool):
    """The per-example losses computed device by device and summed.

    With `closed`, the inputs without a batch axis (class weights, a cost
    matrix, the fused loss's `w`) are not arguments of the `shard_map` body
    but closed over, replicated, as most training code does.
    """
    arrays = {k: v for k, v in values.items() if isinstance(v, np.ndarray)}
    static = {k: v for k, v in values.items() if k not in arrays}
    specs = {k: _spec(np.shape(v), "data") for k, v in arrays.items()}
    batched = {k for k, v in arrays.items() if not closed or "batch" in _logical_axes(np.shape(v))}
    out_spec = P(EVERY_DEVICE, *([None] * (len(_out_shape(loss, values)) - 1)))
    names = registry.differentiable(values)

    def run(arrays):
        def total(floats):
            merged = {**arrays, **floats}
            outside = {k: v for k, v in merged.items() if k not in batched}

            def local(inside):
                return registry.call(loss, {**inside, **outside, **static}, reduction="none")

            inside = {k: merged[k] for k in batched}
            in_specs = ({k: specs[k] for k in batched},)
            return jnp.sum(
                jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_spec)(inside)
            )

        value, grads = jax.value_and_grad(total)({n: arrays[n] for n in names})
        return {"value": value, "grads": grads}

    return run, {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in arrays.items()}


def _replicated_logits_in_shard_map(loss: registry.Loss, values: dict[str, Any], mesh):
    """Replicated logits against labels sharded over every device (integer labels).

    Each device scores the same `[n, C]` logits against its own `[n]` labels;
    one device computes the same as the logits tiled 8 times. Returns the
    per-example losses' sum and its gradient, both ways.
    """
    n = BATCH // 8
    logits = values["logits"][:n]
    labels = values["labels"]
    static = {k: v for k, v in values.items() if k in ("class_weights", "label_smoothing")}

    def per_device(z, y):
        return registry.call(loss, {**static, "logits": z, "labels": y}, reduction="none")

    mapped = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P(EVERY_DEVICE)), out_specs=P(EVERY_DEVICE)
    )

    # One device, no mesh: the logits tiled once per device.
    tiled = lambda z: jnp.sum(per_device(jnp.tile(z, (8, 1)), labels))
    expected, expected_grad = jax.jit(jax.value_and_grad(tiled))(logits)

    def run(arrays):
        total = lambda z: jnp.sum(mapped(z, arrays["labels"]))
        value, grad = jax.value_and_grad(total)(arrays["logits"])
        return {
            "value": value,
            "grads": {"logits": grad},
            "expected": expected,
            "expected_grads": {"logits": expected_grad},
        }

    sharded = {
        "logits": jax.device_put(logits, NamedSharding(mesh, P())),
        "labels": jax.device_put(labels, NamedSharding(mesh, P(EVERY_DEVICE))),
    }
    return run, sharded


def _out_shape(loss, values):
    return jax.eval_shape(lambda: registry.call(loss, values, reduction="none")).shape


_ALL_GATHER = re.compile(r"=\s*(\(?[^=]*?\)?)\s+all-gather(?:-start)?\(.*?op_name=\"([^\"]*)\"")


def all_gathers(hlo: str) -> list[tuple[str, str]]:
    """`(result type, op_name)` of the all-gathers in compiled HLO text."""
    return [(m.group(1).strip(), m.group(2)) for m in _ALL_GATHER.finditer(hlo)]


def _tolist(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64).tolist(), tree)


def _jit_run(loss, values, mesh, layout):
    """`(run, arrays)` of one loss: every reduction and the gradients under `jit`."""
    run, arrays = _evaluate(loss, values, with_sum=mesh is None)
    if mesh is not None:
        arrays = {
            k: jax.device_put(v, NamedSharding(mesh, _spec(np.shape(v), layout)))
            for k, v in arrays.items()
        }

    def named(arrays):
        out, grads, sum_grads = run(arrays)
        return {"values": out, "grads": grads, "sum_grads": sum_grads}

    return named, arrays


def _together(runs: dict[str, tuple]) -> dict[str, Any]:
    """Compiles the runs of several losses as one program; results and gathers by loss.

    One program per mesh setting keeps the compile time down; each loss runs
    in its own `named_scope`, so an all-gather's `op_name` tells its loss.
    """

    def program(all_arrays):
        out = {}
        for name, (run, _) in runs.items():
            with jax.named_scope(name):
                out[name] = run(all_arrays[name])
        return out

    compiled = jax.jit(program).lower({n: a for n, (_, a) in runs.items()}).compile()
    results = _tolist(compiled({n: a for n, (_, a) in runs.items()}))
    gathers = all_gathers(compiled.as_text())
    for name in runs:
        results[name]["all_gathers"] = [t for t, op in gathers if f"/{name}/" in f"/{op}/"]
    return results


def _guarded(runs: dict[str, tuple]) -> dict[str, Any]:
    """`_together`, or loss by loss when the program fails, so that each error is its own."""
    try:
        return _together(runs)
    except Exception:
        results = {}
        for name, run in runs.items():
            try:
                results.update(_together({name: run}))
            except Exception as error:
                results[name] = {"error": "".join(traceback.format_exception_only(error))}
        return results


def main(output: str, names: list[str]) -> None:
    if jax.device_count() != 8:
        raise SystemExit(f"needs 8 devices, got {jax.device_count()}; set XLA_FLAGS")
    losses = [registry.BY_NAME[name] for name in names]
    values = {loss.name: _values(loss) for loss in losses}
    results: dict[str, Any] = {loss.name: {} for loss in losses}

    def record(key: str, runs: dict[str, tuple]) -> None:
        for name, result in _guarded(runs).items():
            results[name][key] = result

    record(
        "one_device", {n: _jit_run(registry.BY_NAME[n], v, None, "data") for n, v in values.items()}
    )
    for axis_type in (AxisType.Auto, AxisType.Explicit):
        mesh = jax.make_mesh((2, 4), EVERY_DEVICE, axis_types=(axis_type,) * 2)
        for layout in LAYOUTS_BY_AXIS_TYPE[axis_type]:
            runs = {n: _jit_run(registry.BY_NAME[n], v, mesh, layout) for n, v in values.items()}
            record(f"{axis_type.name.lower()}/{layout}", runs)
    mesh = jax.make_mesh((2, 4), EVERY_DEVICE, axis_types=(AxisType.Explicit,) * 2)
    # Closed over: with `Auto` axes. (A gather from an array closed over with
    # `Explicit` axes fails inside `shard_map` in JAX itself, jwxent or not.)
    auto = jax.make_mesh((2, 4), EVERY_DEVICE, axis_types=(AxisType.Auto,) * 2)
    for key, closed, on in (("shard_map", False, mesh), ("shard_map/closed", True, auto)):
        record(
            key,
            {
                n: _per_example_in_shard_map(registry.BY_NAME[n], v, on, closed)
                for n, v in values.items()
            },
        )
    integer = {n: v for n, v in values.items() if n in REPLICATED_LOGITS}
    record(
        "shard_map/replicated_logits",
        {
            n: _replicated_logits_in_shard_map(registry.BY_NAME[n], v, mesh)
            for n, v in integer.items()
        },
    )
    with open(output, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
