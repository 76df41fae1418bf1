"""Sharded inputs on 8 simulated CPU devices: one device's numbers, no all-gathered classes.

`tests/_sharding_worker.py` runs in a subprocess (the device count is fixed
when JAX starts) and records, for every exported loss, both mesh axis types
(`Auto`, `Explicit`) and both layouts (`"data"`: batch sharded; `"vocab"`:
batch over `"data"` and classes over `"model"`), the value and gradients of
the jitted loss and the result shapes of the compiled program's all-gathers.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jwxent
from tests import _sharding_worker as worker
from tests._tolerance import assert_close

ROOT = Path(__file__).resolve().parent.parent
MODES = ("auto", "explicit")

# Per-device sizes of the class axis (whole, per "model" shard) and of a fused
# block (whole, per shard): an all-gather with one of them in its result
# shape moves the class axis. Batch-sized ones (32, 16, 8, 4) may cross.
CLASS_SIZES = {
    worker.CLASSES,
    worker.CLASSES // 2,
    worker.CLASSES // 4,
    worker.CLASSES // 8,
    worker.CHUNK // 4,
}

# Cases that fail in code outside this test; each reason says what to change.
_GATHER = (
    "`_weights.gather_class_weights` (and `cost_matrix_weights`) use `jnp.take`, "
    "which sharding in types cannot place; "
    "`class_weights.at[labels].get(mode='clip', out_sharding=<labels' sharding>)` "
    "under Explicit axes fixes it without collectives."
)
_BROADCAST = (
    "`categorical_cross_entropy` builds `jnp.broadcast_to(class_weights, q.shape)`, "
    "a replicated [batch, classes] array whose cotangent is all-gathered; "
    "`class_weights.reshape(1, -1)` (broadcast in the product) avoids it."
)
KNOWN_FAILURES = {
    ("softmax_cross_entropy_with_integer_labels", "explicit"): _GATHER,
    ("softmax_cross_entropy_with_integer_labels:cost_matrix", "explicit"): _GATHER,
    ("softmax_focal_loss_with_integer_labels", "explicit"): _GATHER,
}
KNOWN_ALL_GATHERS = {("categorical_cross_entropy", "explicit"): _BROADCAST}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    output = tmp_path_factory.mktemp("sharding") / "results.json"
    # Fast, unoptimised CPU code generation: this test checks layouts, not speed.
    flags = (
        "--xla_force_host_platform_device_count=8 "
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    )
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "tests._sharding_worker", str(output)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(output.read_text())


def _cases(known: dict[tuple[str, str], str]) -> list:
    """(case id, mode, layout) for every exported loss, known failures marked."""
    params = []
    for case_id in worker.CASES:
        if worker.function_name(case_id) not in jwxent.__all__:
            continue
        for mode in MODES:
            marks = []
            if (case_id, mode) in known:
                marks = [pytest.mark.xfail(reason=known[case_id, mode], strict=True)]
            params += [
                pytest.param(case_id, mode, layout, marks=marks) for layout in worker.LAYOUTS
            ]
    return params


def _run(results, case_id, mode, layout):
    run = results["runs"][case_id][f"{mode}/{layout}"]
    assert "error" not in run, run.get("error")
    return run


def test_every_public_loss_has_a_case():
    losses = {n for n in jwxent.__all__ if "entropy" in n or "loss" in n}
    covered = {worker.function_name(case_id) for case_id in worker.CASES}
    assert losses <= covered, f"add a case to tests/_sharding_worker.py for {losses - covered}"
    assert "linear_softmax_cross_entropy" in losses


def test_worker_ran_every_exported_case(results):
    exported = [c for c in worker.CASES if worker.function_name(c) in jwxent.__all__]
    assert results["exported"] == exported


@pytest.mark.parametrize(("case_id", "mode", "layout"), _cases(KNOWN_FAILURES))
def test_sharded_value_and_gradients_match_one_device(results, case_id, mode, layout):
    run = _run(results, case_id, mode, layout)
    one = results["runs"][case_id]["one_device"]
    terms = worker.BATCH * worker.CLASSES
    assert_close(run["value"], one["value"], jnp.float32, terms)
    assert set(run["grads"]) == set(one["grads"])
    for name, grad in run["grads"].items():
        expected = np.asarray(one["grads"][name])
        assert np.shape(grad) == expected.shape
        assert np.any(expected != 0), f"{name}: a zero gradient checks nothing"
        assert_close(grad, expected, jnp.float32, terms, err_msg=name)


def _dims(hlo_type: str) -> list[int]:
    """Every dimension in an HLO result type such as `(f32[16,4]{0,1}, s32[16])`."""
    return [
        int(d) for shape in re.findall(r"\[([\d,]*)\]", hlo_type) for d in shape.split(",") if d
    ]


@pytest.mark.parametrize(
    ("case_id", "mode", "layout"), _cases({**KNOWN_FAILURES, **KNOWN_ALL_GATHERS})
)
def test_no_all_gather_carries_the_class_axis(results, case_id, mode, layout):
    run = _run(results, case_id, mode, layout)
    offending = [t for t in run["all_gathers"] if CLASS_SIZES & set(_dims(t))]
    assert not offending, f"all-gathers of the class axis: {offending}"


def test_all_gather_shapes_are_parsed():
    """The HLO check can fail: it sees the class axis in a compiled all-gather."""
    hlo = "%ag = f32[16,160]{1,0} all-gather(f32[16,40]{1,0} %p), dimensions={1}\n"
    hlo += "%t = (f32[16]{0}, s32[16]{0}) all-gather-start(%a, %b), dimensions={0}"
    shapes = worker.all_gather_shapes(hlo)
    assert shapes == ["f32[16,160]{1,0}", "(f32[16]{0}, s32[16]{0})"]
    assert [bool(CLASS_SIZES & set(_dims(s))) for s in shapes] == [True, False]
