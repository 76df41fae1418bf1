"""One process of a real multi-process JAX run; writes its comparisons to JSON.

Started N times by `tests/test_multiprocess.py` (one launch for every case):

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests._multiprocess_worker \\
        --process-id I --num-processes N --port PORT --out DIR

Each process initialises `jax.distributed` on loopback (CPU collectives over
gloo), so the `("data", "model")` mesh spans every process's devices, with
`"data"` running across processes. Every process makes the same inputs from
one seed, builds the global arrays from its own part of them
(`jax.make_array_from_process_local_data`), runs each case under `jit` (or
inside `shard_map`) and compares every shard it holds with the whole batch
computed on one of its own devices. It writes `DIR/process_I.json`:

    {"process_index": I, "cases": {case: {"values": {name: [diff, scale]},
                                          "grads": {name: [diff, scale]},
                                          "scalars": {name: value}}
                                   or {"error": message}}}

where `diff` is the largest `|sharded - one device|` over the process's
shards and `scale` the largest `|one device|`; the test holds `diff / scale`
to the tolerances and checks that every process reports the same scalars.
"""

import argparse
import functools
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jwxent
from tests import _registry as registry

BATCH, CLASSES = 32, 40
STEPS = 3
EVERY_DEVICE = ("data", "model")
# Per layout, the mesh axes of the batch axis and of the class axis.
LAYOUTS = {
    "data": {"batch": EVERY_DEVICE, "class": None},
    "tokens": {"batch": "data", "class": None},
    "both": {"batch": "data", "class": "model"},
    "class": {"batch": None, "class": EVERY_DEVICE},
}
Arrays = dict[str, np.ndarray]


# ---------------------------------------------------------------------------
# Global arrays and comparisons.
# ---------------------------------------------------------------------------


def spec(shape: tuple[int, ...], layout: str) -> P:
    """The sharding of an input from its dimensions' sizes (`BATCH`, `CLASSES`).

    An axis that appears twice (a `[C, C]` cost matrix) is replicated.
    """
    names = {BATCH: "batch", CLASSES: "class"}
    logical = [names.get(n) for n in shape]
    axes = LAYOUTS[layout]
    return P(*(None if a is None or logical.count(a) > 1 else axes[a] for a in logical))


def global_array(full: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global array of `full` `[...]`, built from this process's part only.

    The process's part is the block its devices address (contiguous, as
    `"data"` runs across processes).
    """
    indices = sharding.addressable_devices_indices_map(full.shape).values()
    block = tuple(
        slice(min(i[d].indices(n)[0] for i in indices), max(i[d].indices(n)[1] for i in indices))
        for d, n in enumerate(full.shape)
    )
    return jax.make_array_from_process_local_data(sharding, full[block], full.shape)


_REFERENCES: dict[str, Any] = {}


def reference(key: str, compute: Callable[[], Any]) -> Any:
    """The single-device result of a case, computed once for both mesh axis types."""
    if key not in _REFERENCES:
        _REFERENCES[key] = compute()
    return _REFERENCES[key]


def one_device(arrays: Arrays) -> dict[str, jax.Array]:
    """The inputs on this process's first device: the single-device reference."""
    return {k: jax.device_put(v, jax.local_devices()[0]) for k, v in arrays.items()}


def _difference(sharded: jax.Array, expected: np.ndarray) -> list[float]:
    """`[max |sharded - expected|, max |expected|]` over the shards this process holds."""
    expected = np.asarray(expected, np.float64)
    diff = 0.0
    for shard in sharded.addressable_shards:
        local = np.asarray(shard.data, np.float64)
        diff = max(diff, float(np.max(np.abs(local - expected[shard.index]), initial=0.0)))
    return [diff, float(np.max(np.abs(expected), initial=0.0))]


def compare(sharded: dict, expected: dict) -> dict[str, Any]:
    """Differences of `{"values": ..., "grads": ...}` trees and the scalar values."""
    report: dict[str, Any] = {"scalars": {}}
    for group in ("values", "grads"):
        got, want = sharded[group], expected[group]
        report[group] = {k: _difference(got[k], np.asarray(want[k])) for k in want}
    for k, v in sharded["values"].items():
        if v.ndim == 0:
            report["scalars"][k] = float(np.asarray(v.addressable_data(0)))
    return report


def _floats(arrays: Arrays) -> Arrays:
    return {
        k: v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float64 else v
        for k, v in arrays.items()
    }


# ---------------------------------------------------------------------------
# Cases: a program of arrays, the inputs and their layout.
# ---------------------------------------------------------------------------


def loss_program(loss: registry.Loss, static: dict[str, Any], reductions: tuple[str, ...]):
    """`arrays -> {"values": {reduction: value}, "grads": d(sum of the values)/d floats}`."""

    def values(arrays):
        merged = {**arrays, **static}
        return {r: registry.call(loss, merged, reduction=r) for r in reductions}

    def program(arrays):
        floats = {k: v for k, v in arrays.items() if jnp.issubdtype(v.dtype, jnp.floating)}
        rest = {k: v for k, v in arrays.items() if k not in floats}
        total = lambda f: sum(jnp.sum(v) for v in values({**rest, **f}).values())
        return {"values": values(arrays), "grads": jax.grad(total)(floats)}

    return program


def registry_case(
    name: str,
    variant: str,
    layout: str,
    reductions: tuple[str, ...] = ("none", "weighted_mean"),
    keep: tuple[str, ...] | None = None,
):
    """A registered loss's variant on `[BATCH]` examples of `CLASSES` classes.

    With `keep`, only those keywords of the variant are passed.
    """
    loss = registry.BY_NAME[name]
    values = _floats(registry.call_values(loss, variant, loss.make(0, (BATCH,), CLASSES)))
    if keep is not None:
        values = {k: v for k, v in values.items() if k in loss.data or k in keep}
    arrays = {k: v for k, v in values.items() if isinstance(v, np.ndarray)}
    static = {k: v for k, v in values.items() if k not in arrays}
    if loss.layout == "fused":
        # A multiple of every token sharding here that divides the tokens:
        # each device keeps its own rows of every chunk.
        static["chunk_size"] = 8
    return loss_program(loss, static, reductions), arrays, layout


DATA_PARALLEL_KEYWORDS = ("class_weights", "weights", "where", "ignore_index")
PROBABILITY_KEYWORDS = ("class_weights", "weights", "where", "label_smoothing")
FOCAL_KEYWORDS = ("class_weights", "weights", "ignore_index", "gamma")


def jit_cases() -> dict[str, tuple]:
    """The cases run under `jit` with sharded inputs, with either mesh axis type."""
    ce, fused = "softmax_cross_entropy_with_integer_labels", "linear_softmax_cross_entropy"
    return {
        # `weighted_mean` needs the global sum of the weights, `mean` the count.
        "data_parallel_ce": registry_case(
            ce, "everything", "data", registry.REDUCTIONS, keep=DATA_PARALLEL_KEYWORDS
        ),
        # Class weights, smoothing, z-loss, a cost matrix, margins, ...
        "vocab_parallel_ce/both": registry_case(ce, "everything", "both"),
        "vocab_parallel_ce/class": registry_case(ce, "everything", "class"),
        "fused/w_over_vocab": registry_case(fused, "everything", "both", ("weighted_mean",)),
        "fused/tokens_over_processes": registry_case(fused, "everything", "tokens", ("sum",)),
        "probability_labels": registry_case(
            "softmax_cross_entropy", "everything", "data", keep=PROBABILITY_KEYWORDS
        ),
        "focal": registry_case(
            "softmax_focal_loss_with_integer_labels", "everything", "data", keep=FOCAL_KEYWORDS
        ),
        "sigmoid_pos_weight": registry_case("sigmoid_binary_cross_entropy", "everything", "data"),
    }


def _sharded_inputs(arrays: Arrays, layout: str, mesh) -> dict[str, jax.Array]:
    return {
        k: global_array(v, NamedSharding(mesh, spec(np.shape(v), layout)))
        for k, v in arrays.items()
    }


def run_jit_case(name: str, program: Callable, arrays: Arrays, layout: str, mesh):
    expected = reference(name, lambda: jax.jit(program)(one_device(arrays)))
    with jax.set_mesh(mesh):
        sharded = jax.jit(program)(_sharded_inputs(arrays, layout, mesh))
    return compare(sharded, expected)


def run_jit_cases(mesh) -> dict[str, dict]:
    """`{case: report}` of `jit_cases`, one program per case.

    (One program for all cases compiles in more time, not less.)
    """
    runs = {n: functools.partial(run_jit_case, n, *case, mesh) for n, case in jit_cases().items()}
    return {n: _guarded(run) for n, run in runs.items()}


# ---------------------------------------------------------------------------
# shard_map bodies closing over replicated class weights.
# ---------------------------------------------------------------------------

SHARD_MAP_VARIANTS = {
    "class_weights": ("softmax_cross_entropy_with_integer_labels", {}),
    "label_smoothing": ("softmax_cross_entropy_with_integer_labels", {"label_smoothing": 0.1}),
    "probability_labels": ("softmax_cross_entropy", {}),
}


def closed_over(mesh) -> bool:
    """Whether `shard_map` bodies close over the class weights on this mesh.

    They do with `Auto` axes. JAX rejects a body that closes over an array typed with
    `Explicit` mesh axes ("pass those inputs as an argument to shard_map"),
    jwxent or not, so there the class weights are a replicated argument.
    """
    return AxisType.Explicit not in mesh.axis_types


def shard_map_case(variant: str, mesh) -> dict[str, Any]:
    """Per-example losses of the local batch in `shard_map` with replicated class weights."""
    name, static = SHARD_MAP_VARIANTS[variant]
    loss = registry.BY_NAME[name]
    made = _floats(loss.make(1, (BATCH,), CLASSES))
    batched = {"logits": made["logits"], "labels": made["labels"]}
    arrays = {**batched, "class_weights": made["class_weights"]}

    def per_example(batch, class_weights):
        merged = {**batch, **static, "class_weights": class_weights}
        return registry.call(loss, merged, reduction="none")

    def program(per_example_fn):
        def run(arrays):
            floats = {"logits": arrays["logits"], "class_weights": arrays["class_weights"]}

            def total(f):
                batch = {"logits": f["logits"], "labels": arrays["labels"]}
                return jnp.sum(per_example_fn(batch, f["class_weights"]))

            value, grads = jax.value_and_grad(total)(floats)
            return {"values": {"sum": value}, "grads": grads}

        return run

    specs = {k: spec(np.shape(v), "data") for k, v in batched.items()}

    def mapped(batch, class_weights):
        if closed_over(mesh):
            body = lambda b: per_example(b, class_weights)  # closed over, replicated
            return jax.shard_map(body, mesh=mesh, in_specs=(specs,), out_specs=P(EVERY_DEVICE))(
                batch
            )
        in_specs = (specs, P())
        run = jax.shard_map(per_example, mesh=mesh, in_specs=in_specs, out_specs=P(EVERY_DEVICE))
        return run(batch, class_weights)

    expected = reference(
        f"shard_map/{variant}", lambda: jax.jit(program(per_example))(one_device(arrays))
    )
    inputs = {
        k: global_array(v, NamedSharding(mesh, spec(np.shape(v), "data")))
        for k, v in arrays.items()
    }
    with jax.set_mesh(mesh):
        sharded = jax.jit(program(mapped))(inputs)
    return compare(sharded, expected)


# ---------------------------------------------------------------------------
# Class statistics and a train step.
# ---------------------------------------------------------------------------


def _labels(seed: int, shape: tuple[int, ...], ignored: float = 0.1) -> np.ndarray:
    """Long-tailed labels: class c drawn with probability ∝ 0.9^c, a fraction ignored."""
    rng = np.random.default_rng(seed)
    p = 0.9 ** np.arange(CLASSES)
    labels = rng.choice(CLASSES, shape, p=p / p.sum()).astype(np.int32)
    return np.where(rng.random(shape) < ignored, registry.IGNORE, labels).astype(np.int32)


def class_statistics_case(mesh) -> dict[str, Any]:
    """`class_counts` (integer and soft labels) and `STEPS` estimator updates under `jit`."""
    rng = np.random.default_rng(2)
    arrays = {
        "labels": _labels(2, (STEPS, BATCH)),
        "weights": rng.uniform(0.5, 2.0, (STEPS, BATCH)).astype(np.float32),
        "soft": rng.dirichlet(np.ones(CLASSES), (STEPS, BATCH)).astype(np.float32),
    }

    def program(arrays):
        kw = {"ignore_index": registry.IGNORE}
        counts = jwxent.class_counts(
            arrays["labels"][0], CLASSES, weights=arrays["weights"][0], **kw
        )
        soft = jwxent.class_counts(arrays["soft"][0], CLASSES)
        state = jwxent.class_balance_init(CLASSES)
        for step in range(STEPS):
            state = jwxent.class_balance_update(state, arrays["labels"][step], decay=0.5, **kw)
        values = {"counts": counts, "soft_counts": soft, "ema": state.ema}
        values |= {"bias_correction": state.bias_correction, "num_updates": state.num_updates}
        return {"values": values, "grads": {}}

    # The steps' batches are `[STEPS, BATCH]`: the batch axis is the second.
    expected = reference("class_statistics", lambda: jax.jit(program)(one_device(arrays)))
    shardings = {k: NamedSharding(mesh, P(None, EVERY_DEVICE)) for k in arrays}
    inputs = {k: global_array(v, shardings[k]) for k, v in arrays.items()}
    with jax.set_mesh(mesh):
        sharded = jax.jit(program)(inputs)
    report = compare(sharded, expected)
    report["state"] = np.asarray(sharded["values"]["ema"].addressable_data(0)).tolist()
    return report


def shard_map_counts_case(mesh) -> dict[str, Any]:
    """`class_counts` and an update inside `shard_map` with `axis_name`."""
    labels = _labels(3, (BATCH,))

    def body(y):
        counts = jwxent.class_counts(
            y, CLASSES, ignore_index=registry.IGNORE, axis_name=EVERY_DEVICE
        )
        state = jwxent.class_balance_update(
            jwxent.class_balance_init(CLASSES),
            y,
            ignore_index=registry.IGNORE,
            axis_name=EVERY_DEVICE,
        )
        return counts, state.ema

    def program(y, mapped):
        counts, ema = mapped(y)
        return {"values": {"counts": counts, "ema": ema}, "grads": {}}

    single = lambda y: (
        jwxent.class_counts(y, CLASSES, ignore_index=registry.IGNORE),
        jwxent.class_balance_update(
            jwxent.class_balance_init(CLASSES), y, ignore_index=registry.IGNORE
        ).ema,
    )
    expected = reference(
        "shard_map_counts",
        lambda: jax.jit(lambda y: program(y, single))(one_device({"y": labels})["y"]),
    )
    mapped = jax.shard_map(body, mesh=mesh, in_specs=P(EVERY_DEVICE), out_specs=P())
    sharded_labels = global_array(labels, NamedSharding(mesh, P(EVERY_DEVICE)))
    with jax.set_mesh(mesh):
        sharded = jax.jit(lambda y: program(y, mapped))(sharded_labels)
    return compare(sharded, expected)


def eager_counts_case(mesh) -> dict[str, Any]:
    """`class_counts` called eagerly (no `jit`) on a global array of batch-sharded labels."""
    labels = _labels(6, (BATCH,))
    count = lambda y: jwxent.class_counts(y, CLASSES, ignore_index=registry.IGNORE)
    expected = reference("eager_counts", lambda: count(one_device({"y": labels})["y"]))
    with jax.set_mesh(mesh):
        sharded = count(global_array(labels, NamedSharding(mesh, P(EVERY_DEVICE))))
    return compare(
        {"values": {"counts": sharded}, "grads": {}}, {"values": {"counts": expected}, "grads": {}}
    )


HIDDEN = 8


def train_case(mesh) -> dict[str, Any]:
    """`STEPS` jitted adamw steps of a linear classifier with the fused loss.

    Each step folds its batch into the online class-balance estimate and
    weights the loss with it; the batch is sharded over every device.
    """
    rng = np.random.default_rng(4)
    data = {
        "x": rng.standard_normal((STEPS, BATCH, HIDDEN)).astype(np.float32),
        "labels": _labels(4, (STEPS, BATCH), ignored=0.0),
    }
    params = {
        "w": (rng.standard_normal((HIDDEN, CLASSES)) / np.sqrt(HIDDEN)).astype(np.float32),
        "b": np.zeros((CLASSES,), np.float32),
    }
    optimizer = optax.adamw(1e-2)

    def loss_fn(params, x, labels, class_weights):
        return jwxent.linear_softmax_cross_entropy(
            x,
            params["w"],
            labels,
            bias=params["b"],
            class_weights=class_weights,
            reduction="weighted_mean",
            chunk_size=8,
        )

    def step(carry, batch):
        params, opt_state, balance = carry
        balance = jwxent.class_balance_update(balance, batch["labels"])
        class_weights = jwxent.class_balance_weights(balance)
        loss, grads = jax.value_and_grad(loss_fn)(
            params, batch["x"], batch["labels"], class_weights
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, balance), loss

    def program(params, data):
        carry = (params, optimizer.init(params), jwxent.class_balance_init(CLASSES))
        losses = []
        for t in range(STEPS):
            carry, loss = jax.jit(step)(carry, {k: v[t] for k, v in data.items()})
            losses.append(loss)
        params, _, balance = carry
        return {
            "values": {f"loss_{t}": loss for t, loss in enumerate(losses)} | {"ema": balance.ema},
            "grads": params,
        }

    with jax.numpy_dtype_promotion("standard"):  # optax's step count promotes.
        expected = reference("train", lambda: program(one_device(params), one_device(data)))
        replicated = {k: global_array(v, NamedSharding(mesh, P())) for k, v in params.items()}
        batched = {
            k: global_array(v, NamedSharding(mesh, P(None, EVERY_DEVICE))) for k, v in data.items()
        }
        with jax.set_mesh(mesh):
            sharded = program(replicated, batched)
    report = compare(sharded, expected)
    report["state"] = np.asarray(sharded["values"]["ema"].addressable_data(0)).tolist()
    return report


def mismatched_class_weights_case(mesh) -> dict[str, Any]:
    """Class weights that differ between processes where they must agree.

    JAX trusts `make_array_from_process_local_data` that a replicated array
    is the same everywhere; `multihost_utils.assert_equal` checks it. The
    result is recorded: each device weights its own examples with its own
    process's copy (the reduction is one all-reduce), against the loss that
    weights each process's examples with that process's weights.
    """
    loss = registry.BY_NAME["softmax_cross_entropy_with_integer_labels"]
    made = _floats(loss.make(5, (BATCH,), CLASSES))
    mine = made["class_weights"] * (1.0 + jax.process_index())
    report: dict[str, Any] = {}
    try:
        multihost_utils.assert_equal(mine, "class_weights")
        report["assert_equal"] = "passed"
    except AssertionError as error:
        report["assert_equal"] = str(error).splitlines()[0][:200]
    sharding = NamedSharding(mesh, P())
    class_weights = jax.make_array_from_process_local_data(sharding, mine, mine.shape)
    batch = NamedSharding(mesh, P(EVERY_DEVICE))
    logits = global_array(made["logits"], NamedSharding(mesh, P(EVERY_DEVICE, None)))
    labels = global_array(made["labels"], batch)
    fn = lambda z, y, cw: jwxent.softmax_cross_entropy_with_integer_labels(
        z, y, class_weights=cw, reduction="sum"
    )
    got = jax.jit(fn)(logits, labels, class_weights)
    # Each process's examples (its half of the batch) with its own weights.
    halves = np.array_split(np.arange(BATCH), jax.process_count())
    per_process = [
        float(fn(made["logits"][h], made["labels"][h], made["class_weights"] * (1.0 + p)))
        for p, h in enumerate(halves)
    ]
    report["scalars"] = {"sum": float(np.asarray(got.addressable_data(0)))}
    report["each_process_own_weights"] = float(np.sum(per_process))
    report["first_process_weights"] = float(
        fn(made["logits"], made["labels"], made["class_weights"])
    )
    return report


# ---------------------------------------------------------------------------
# Running everything.
# ---------------------------------------------------------------------------


def _guarded(run: Callable[[], dict]) -> dict[str, Any]:
    """`run()` and its time in seconds, or its error: one case's failure is its own."""
    start = time.perf_counter()
    try:
        report = run()
    except Exception as error:
        report = {"error": "".join(traceback.format_exception_only(error)).strip()[-2000:]}
    return report | {"seconds": round(time.perf_counter() - start, 2)}


def run_all() -> dict[str, Any]:
    """Every case with `Auto` and with `Explicit` mesh axes: `{case: report}`."""
    cases: dict[str, Any] = {}
    for axis_type in (AxisType.Auto, AxisType.Explicit):
        mesh = jax.make_mesh((jax.process_count(), 4), EVERY_DEVICE, axis_types=(axis_type,) * 2)
        kind = axis_type.name.lower()
        cases |= {f"{kind}/{name}": r for name, r in run_jit_cases(mesh).items()}
        runs: dict[str, Callable[[], dict]] = {}
        shard_map = "shard_map_closed" if closed_over(mesh) else "shard_map_argument"
        for variant in SHARD_MAP_VARIANTS:
            runs[f"{shard_map}/{variant}"] = functools.partial(shard_map_case, variant, mesh)
        runs["class_statistics"] = functools.partial(class_statistics_case, mesh)
        runs["shard_map_counts"] = functools.partial(shard_map_counts_case, mesh)
        runs["train_step"] = functools.partial(train_case, mesh)
        runs["eager_counts"] = functools.partial(eager_counts_case, mesh)
        cases |= {f"{kind}/{name}": _guarded(run) for name, run in runs.items()}
    auto = jax.make_mesh((jax.process_count(), 4), EVERY_DEVICE, axis_types=(AxisType.Auto,) * 2)
    cases["mismatched_class_weights"] = _guarded(
        functools.partial(mismatched_class_weights_case, auto)
    )
    return cases


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = _parse(argv)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{args.port}",
        num_processes=args.num_processes,
        process_id=args.process_id,
        initialization_timeout=60,
        heartbeat_timeout_seconds=30,
    )
    # The "data" mesh axis runs across processes: one row of devices each.
    devices = jax.make_mesh((args.num_processes, 4), EVERY_DEVICE).devices
    rows = [sorted({d.process_index for d in row}) for row in devices]
    assert rows == [[p] for p in range(args.num_processes)], rows
    results = {"process_index": jax.process_index(), "cases": run_all()}
    (args.out / f"process_{args.process_id}.json").write_text(json.dumps(results))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
