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


def _run_worker(output: Path) -> dict:
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


def _dims(hlo_type: str) -> list[int]:
    """Every dimension in an HLO result type such as `(f32[16,4]{0,1}, s32[16])`."""
    shapes = re.findall(r"\[([\d,]*)\]", hlo_type)
    return [int(d) for shape in shapes for d in shape.split(",") if d]


def _problems(run: dict, one_device: dict) -> list[str]:
    """What is wrong with one sharded run: an error, other numbers, gathered classes."""
    if "error" in run:
        return [run["error"].strip()]
    problems = []
    terms = worker.BATCH * worker.CLASSES
    try:
        assert_close(run["value"], one_device["value"], jnp.float32, terms, err_msg="value")
        assert set(run["grads"]) == set(one_device["grads"])
        for name, grad in run["grads"].items():
            expected = np.asarray(one_device["grads"][name])
            assert np.any(expected != 0), f"{name}: a zero gradient checks nothing"
            assert_close(grad, expected, jnp.float32, terms, err_msg=f"d{name}")
    except AssertionError as error:
        problems.append(f"differs from one device: {error}")
    gathered = [t for t in run["all_gathers"] if CLASS_SIZES & set(_dims(t))]
    if gathered:
        problems.append(f"all-gathers of the class axis: {gathered}")
    return problems


def test_every_public_loss_has_a_case():
    losses = {n for n in jwxent.__all__ if "entropy" in n or "loss" in n}
    covered = {worker.function_name(case_id) for case_id in worker.CASES}
    assert losses <= covered, f"add a case to tests/_sharding_worker.py for {losses - covered}"
    assert "linear_softmax_cross_entropy" in losses


def test_sharded_losses_match_one_device_and_never_gather_classes(tmp_path):
    """Every exported loss, both mesh axis types, both layouts, in one subprocess.

    One test on purpose: under pytest-xdist, tests of one module may run in
    different processes, and each would start the minute-long worker again.
    """
    results = _run_worker(tmp_path / "results.json")
    exported = [c for c in worker.CASES if worker.function_name(c) in jwxent.__all__]
    assert results["exported"] == exported
    report: dict[tuple[str, str], list[str]] = {}
    for case_id in exported:
        runs = results["runs"][case_id]
        for mode in MODES:
            for layout in worker.LAYOUTS:
                for problem in _problems(runs[f"{mode}/{layout}"], runs["one_device"]):
                    report.setdefault((case_id, mode), []).append(f"{layout}: {problem}")
    assert not report, "\n".join(f"{key}: {line}" for key in report for line in report[key])


def test_all_gather_shapes_are_parsed():
    """The HLO check can fail: it sees the class axis in a compiled all-gather."""
    hlo = "%ag = f32[16,160]{1,0} all-gather(f32[16,40]{1,0} %p), dimensions={1}\n"
    hlo += "%t = (f32[16]{0}, s32[16]{0}) all-gather-start(%a, %b), dimensions={0}"
    shapes = worker.all_gather_shapes(hlo)
    assert shapes == ["f32[16,160]{1,0}", "(f32[16]{0}, s32[16]{0})"]
    assert [bool(CLASS_SIZES & set(_dims(s))) for s in shapes] == [True, False]
