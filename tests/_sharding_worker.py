"""Runs every public loss on 8 simulated CPU devices; writes one JSON file.

Started by `tests/test_sharding.py` in a subprocess, because the device count
is fixed when JAX starts:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests._sharding_worker OUT.json

For every loss in `CASES` that `jwxent` exports, for both mesh axis types
(`Auto`: sharding propagation; `Explicit`: sharding in types, the default of
`jax.make_mesh`) and both layouts on a 2×4 `("data", "model")` mesh:

* `"data"`: the batch axis sharded over all 8 devices;
* `"vocab"`: the batch axis over `"data"` and the class (vocabulary) axis over
  `"model"`, as in Megatron's vocabulary-parallel cross-entropy,

it records the value and gradients of the jitted loss on the sharded inputs,
the same on one device, and the result shapes of the `all-gather`s in the
compiled program. The test compares them; this script only computes.
"""

import json
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jwxent

BATCH, HIDDEN, CLASSES, CHUNK = 32, 24, 160, 40
"""Distinct sizes, so that a collective's shape tells which axis it carries.

Per device, the batch axis is 32, 16 or 4 long, the class axis 160 or 40 and
a fused-loss block 40 or 10 columns; the hidden size is 24.
"""

LAYOUTS = {
    "data": {"batch": ("data", "model"), "class": None},
    "vocab": {"batch": "data", "class": "model"},
}


class Case:
    """A loss call: named inputs with their logical axes, and which to differentiate.

    Attributes:
      loss: `loss(**inputs) -> scalar`, calling the public function.
      inputs: name -> (array, logical axes), e.g. `("batch", "class")`.
      differentiable: the input names to take gradients for.
    """

    def __init__(
        self,
        loss: Callable[..., jax.Array],
        inputs: dict[str, tuple[np.ndarray, tuple[str | None, ...]]],
        differentiable: tuple[str, ...],
    ):
        self.loss, self.inputs, self.differentiable = loss, inputs, differentiable


IGNORE = -100


def _data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = 2 * rng.standard_normal((BATCH, CLASSES))
    labels = rng.integers(0, CLASSES, BATCH)
    return {
        "logits": logits.astype(np.float32),
        "labels": np.where(rng.random(BATCH) < 0.2, IGNORE, labels).astype(np.int32),
        "probs": rng.dirichlet(np.ones(CLASSES), BATCH).astype(np.float32),
        "binary": (rng.random((BATCH, CLASSES)) < 0.3).astype(np.float32),
        "sigmoid_probs": (1 / (1 + np.exp(-logits))).astype(np.float32),
        "weights": rng.uniform(0.5, 2.0, BATCH).astype(np.float32),
        "elementwise_weights": rng.uniform(0.5, 2.0, (BATCH, CLASSES)).astype(np.float32),
        "class_weights": rng.uniform(0.5, 2.0, CLASSES).astype(np.float32),
        "cost_matrix": rng.uniform(0.5, 2.0, (CLASSES, CLASSES)).astype(np.float32),
        "x": rng.standard_normal((BATCH, HIDDEN)).astype(np.float32),
        "w": (rng.standard_normal((HIDDEN, CLASSES)) / np.sqrt(HIDDEN)).astype(np.float32),
        "bias": rng.standard_normal(CLASSES).astype(np.float32),
    }


BC, B, C = ("batch", "class"), ("batch",), ("class",)


def _softmax_case(
    name: str, label_key: str, *, cost_matrix: bool = False, **options: Any
) -> Callable[[dict], Case]:
    """A softmax-family loss of `(logits, labels)` with weights and class weights.

    Integer labels also get `ignore_index`; `cost_matrix` adds a replicated
    `[classes, classes]` cost matrix.
    """
    integer = label_key == "labels"
    if integer:
        options["ignore_index"] = IGNORE

    def make(d: dict) -> Case:
        def loss(logits, labels, weights, class_weights, **extra):
            return getattr(jwxent, name)(
                logits,
                labels,
                weights=weights,
                class_weights=class_weights,
                reduction="weighted_mean",
                **options,
                **extra,
            )

        inputs = {
            "logits": (d["logits"], BC),
            "labels": (d[label_key], B if integer else BC),
            "weights": (d["weights"], B),
            "class_weights": (d["class_weights"], C),
        }
        differentiable = ("logits", "weights", "class_weights")
        if not integer:
            differentiable += ("labels",)
        if cost_matrix:
            inputs["cost_matrix"] = (d["cost_matrix"], (None, None))
            differentiable += ("cost_matrix",)
        return Case(loss, inputs, differentiable)

    return make


def _elementwise_case(name: str, input_key: str, label_key: str) -> Callable[[dict], Case]:
    """A sigmoid-family loss: one loss per element, elementwise weights."""

    def make(d: dict) -> Case:
        def loss(logits, labels, weights):
            return getattr(jwxent, name)(logits, labels, weights=weights, reduction="mean")

        inputs = {
            "logits": (d[input_key], BC),
            "labels": (d[label_key], BC),
            "weights": (d["elementwise_weights"], BC),
        }
        return Case(loss, inputs, ("logits", "weights"))

    return make


def _binary_probability_case(d: dict) -> Case:
    """Keras `binary_crossentropy`: the mean over the class axis, per-example weights."""

    def loss(logits, labels, weights):
        return jwxent.binary_cross_entropy(logits, labels, weights=weights, reduction="mean")

    inputs = {
        "logits": (d["sigmoid_probs"], BC),
        "labels": (d["binary"], BC),
        "weights": (d["weights"], B),
    }
    return Case(loss, inputs, ("logits", "weights"))


def _fused_case(d: dict) -> Case:
    """The fused projection: `w` and `bias` carry the vocabulary axis."""

    def loss(x, w, labels, bias, weights, class_weights):
        return jwxent.linear_softmax_cross_entropy(
            x,
            w,
            labels,
            bias=bias,
            weights=weights,
            class_weights=class_weights,
            label_smoothing=0.1,
            z_loss=1e-3,
            logit_soft_cap=5.0,
            ignore_index=IGNORE,
            reduction="weighted_mean",
            chunk_size=CHUNK,
        )

    inputs = {
        "x": (d["x"], ("batch", None)),
        "w": (d["w"], (None, "class")),
        "labels": (d["labels"], B),
        "bias": (d["bias"], C),
        "weights": (d["weights"], B),
        "class_weights": (d["class_weights"], C),
    }
    return Case(loss, inputs, ("x", "w", "bias", "weights", "class_weights"))


CASES: dict[str, Callable[[dict], Case]] = {
    "softmax_cross_entropy_with_integer_labels": _softmax_case(
        "softmax_cross_entropy_with_integer_labels", "labels", label_smoothing=0.1, z_loss=1e-3
    ),
    "softmax_cross_entropy_with_integer_labels:cost_matrix": _softmax_case(
        "softmax_cross_entropy_with_integer_labels", "labels", cost_matrix=True
    ),
    "softmax_cross_entropy": _softmax_case("softmax_cross_entropy", "probs", z_loss=1e-3),
    "safe_softmax_cross_entropy": _softmax_case("safe_softmax_cross_entropy", "probs"),
    "poly_loss_cross_entropy": _softmax_case("poly_loss_cross_entropy", "probs"),
    "softmax_focal_loss": _softmax_case("softmax_focal_loss", "probs", gamma=2.0),
    "softmax_focal_loss_with_integer_labels": _softmax_case(
        "softmax_focal_loss_with_integer_labels", "labels", gamma=2.0
    ),
    "categorical_cross_entropy": _softmax_case("categorical_cross_entropy", "probs"),
    "sigmoid_binary_cross_entropy": _elementwise_case(
        "sigmoid_binary_cross_entropy", "logits", "binary"
    ),
    "sigmoid_focal_loss": _elementwise_case("sigmoid_focal_loss", "logits", "binary"),
    "binary_cross_entropy": _binary_probability_case,
    "linear_softmax_cross_entropy": _fused_case,
}
"""Case id (`function` or `function:variant`) -> inputs; a test checks none is missing."""


def function_name(case_id: str) -> str:
    return case_id.split(":")[0]


def _spec(axes: tuple[str | None, ...], layout: str) -> P:
    return P(*(None if axis is None else LAYOUTS[layout][axis] for axis in axes))


_ALL_GATHER = re.compile(r"=\s*(\(?[^=]*?\)?)\s+all-gather(?:-start)?\(")


def all_gather_shapes(hlo: str) -> list[str]:
    """Result types of the all-gathers in compiled HLO text, e.g. `f32[16,4]{0,1}`."""
    return [match.group(1).strip() for match in _ALL_GATHER.finditer(hlo)]


def _run(case: Case, mesh: jax.sharding.Mesh | None, layout: str) -> dict[str, Any]:
    """Value, gradients and (sharded) all-gather shapes of the jitted loss."""
    names = list(case.inputs)
    arrays = [jnp.asarray(case.inputs[name][0]) for name in names]
    if mesh is not None:
        arrays = [
            jax.device_put(a, NamedSharding(mesh, _spec(case.inputs[n][1], layout)))
            for n, a in zip(names, arrays, strict=True)
        ]
    argnums = tuple(names.index(n) for n in case.differentiable)
    loss = jax.jit(
        jax.value_and_grad(lambda *a: case.loss(**dict(zip(names, a, strict=True))), argnums)
    )
    compiled = loss.lower(*arrays).compile()
    value, grads = compiled(*arrays)
    return {
        "value": float(value),
        "grads": {
            name: np.asarray(g).tolist() for name, g in zip(case.differentiable, grads, strict=True)
        },
        "all_gathers": [] if mesh is None else all_gather_shapes(compiled.as_text()),
    }


def main(output: str) -> None:
    if jax.device_count() != 8:
        raise SystemExit(f"needs 8 devices, got {jax.device_count()}; set XLA_FLAGS")
    data = _data()
    exported = [case_id for case_id in CASES if function_name(case_id) in jwxent.__all__]
    results: dict[str, Any] = {"exported": exported, "runs": {}}
    for case_id in exported:
        case = CASES[case_id](data)
        runs = results["runs"][case_id] = {"one_device": _run(case, None, "data")}
        for axis_type in (AxisType.Auto, AxisType.Explicit):
            mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
            for layout in LAYOUTS:
                key = f"{axis_type.name.lower()}/{layout}"
                try:
                    runs[key] = _run(case, mesh, layout)
                except Exception as error:  # reported per case, so one failure hides nothing
                    runs[key] = {"error": "".join(traceback.format_exception_only(error))}
    with open(output, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
