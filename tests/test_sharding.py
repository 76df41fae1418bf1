"""Sharded inputs on 8 simulated CPU devices: one device's numbers, no gathered axes.

`tests/_sharding_worker.py` runs in a subprocess (the device count is fixed
when JAX starts) and records, for every loss of the registry, every reduction
and the gradients under `jit` with `Auto` and `Explicit` mesh axes in three
layouts, and inside `jax.shard_map`; see its docstring. Here each run is
compared with one device, and the compiled programs are searched for
all-gathers that move the class axis (with the classes sharded) or a
batch-sized array (with only the batch sharded).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import _registry as registry
from tests import _sharding_worker as worker
from tests._once import once_per_run

ROOT = Path(__file__).resolve().parent.parent
RUNS = [
    f"{axis_type.name.lower()}/{layout}"
    for axis_type, layouts in worker.LAYOUTS_BY_AXIS_TYPE.items()
    for layout in layouts
]

# Per-device sizes of the class axis (whole, per "model" shard, per device)
# and of the batch axis (whole, per "data" shard).
CLASS_SIZES = {worker.CLASSES, worker.CLASSES // 4, worker.CLASSES // 8}
BATCH_SIZES = {worker.BATCH, worker.BATCH // 2}
ANY_BATCH_SIZE = BATCH_SIZES | {worker.BATCH // 8}


# Two halves of the registry, one subprocess each; `xdist_group` keeps each
# half's tests on one pytest-xdist worker, so the halves run in parallel.
HALVES = {
    "first": [loss.name for loss in registry.LOSSES[::2]],
    "second": [loss.name for loss in registry.LOSSES[1::2]],
}


def _half(name: str) -> str:
    return next(half for half, names in HALVES.items() if name in names)


def _run_worker(tmp_path_factory, names: list[str]) -> dict:
    output = tmp_path_factory.mktemp("sharding") / "results.json"
    # The suite's fast-compile flags (conftest.py) and 8 simulated devices.
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "tests._sharding_worker", str(output), *names]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(output.read_text())


# Each half's subprocess runs once per test run, whichever workers ask for it.
@pytest.fixture(scope="session")
def first(tmp_path_factory) -> dict:
    run = lambda: _run_worker(tmp_path_factory, HALVES["first"])
    return once_per_run(tmp_path_factory, "sharding-first", run, timeout=600)


@pytest.fixture(scope="session")
def second(tmp_path_factory) -> dict:
    run = lambda: _run_worker(tmp_path_factory, HALVES["second"])
    return once_per_run(tmp_path_factory, "sharding-second", run, timeout=600)


def _cases(test):
    """Parametrises `test(runs)` over the registry, each loss in its half's group."""
    return pytest.mark.parametrize(
        "name",
        [
            pytest.param(loss.name, marks=pytest.mark.xdist_group(_half(loss.name)))
            for loss in registry.LOSSES
        ],
    )(test)


def _dims(hlo_type: str) -> list[int]:
    """Every dimension in an HLO result type such as `(f32[16,4]{0,1}, s32[16])`."""
    shapes = re.findall(r"\[([\d,]*)\]", hlo_type)
    return [int(d) for shape in shapes for d in shape.split(",") if d]


def _close(actual, expected, what: str) -> list[str]:
    try:
        np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=2e-6, err_msg=what)
    except AssertionError as error:
        return [str(error).strip().splitlines()[0] + f" ({what})"]
    return []


def _differences(run: dict, one_device: dict) -> list[str]:
    problems = []
    for reduction, value in one_device["values"].items():
        problems += _close(run["values"][reduction], value, reduction)
    for name, grad in one_device["grads"].items():
        assert np.any(np.asarray(grad) != 0), f"d{name}: a zero gradient checks nothing"
        problems += _close(run["grads"][name], grad, f"d{name}")
    return problems


def _gathers(run: dict, layout: str) -> list[str]:
    """All-gathers that move `[batch, classes]` logits (classes sharded) or a batch.

    With the classes sharded, `[batch]` vectors (per-device partial sums) and
    per-class parameters (the cotangent of a replicated cost matrix) may cross
    devices, arrays of both a batch and a class axis may not. With only the
    batch sharded, nothing batch-sized is gathered to every device.
    """

    def moved(dims: set[int]) -> bool:
        if layout == "data":
            return bool(BATCH_SIZES & dims)
        return bool(CLASS_SIZES & dims) and bool(ANY_BATCH_SIZE & dims)

    return [t for t in run["all_gathers"] if moved(set(_dims(t)))]


def test_every_loss_of_the_registry_runs_sharded():
    halves = [name for names in HALVES.values() for name in names]
    assert sorted(halves) == sorted(loss.name for loss in registry.LOSSES)


@_cases
def test_sharded_jit_equals_one_device_and_gathers_no_sharded_axis(request, name):
    runs = request.getfixturevalue(_half(name))[name]
    report = []
    for key in RUNS:
        run = runs[key]
        if "error" in run:
            report.append(f"{key}: {run['error'].strip()}")
            continue
        report += [f"{key}: {p}" for p in _differences(run, runs["one_device"])]
        gathered = _gathers(run, key.split("/")[1])
        if gathered:
            report.append(f"{key}: all-gathers {gathered}")
    assert not report, "\n".join(report)


@pytest.mark.parametrize("key", ["shard_map", "shard_map/closed"])
@_cases
def test_shard_map_with_default_check_vma_equals_one_device(request, name, key):
    """Per-class inputs as arguments of the body, or closed over (replicated)."""
    runs = request.getfixturevalue(_half(name))[name]
    run = runs[key]
    assert "error" not in run, run.get("error")
    one_device = runs["one_device"]
    report = _close(run["value"], np.sum(one_device["values"]["none"]), "value")
    for name_, grad in one_device["sum_grads"].items():
        report += _close(run["grads"][name_], grad, f"d{name_}")
    assert not report, "\n".join(report)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xdist_group(_half(name)))
        for name in worker.REPLICATED_LOGITS
    ],
)
def test_shard_map_with_replicated_logits_and_sharded_labels(request, name):
    run = request.getfixturevalue(_half(name))[name]["shard_map/replicated_logits"]
    assert "error" not in run, run.get("error")
    report = _close(run["value"], run["expected"], "value")
    report += _close(run["grads"]["logits"], run["expected_grads"]["logits"], "dlogits")
    assert not report, "\n".join(report)


def test_all_gather_shapes_are_parsed():
    """The HLO check can fail: it sees the class axis in a compiled all-gather."""
    hlo = "%ag = f32[16,160]{1,0} all-gather(f32[16,40]{1,0} %p), dimensions={1}, "
    hlo += 'metadata={op_name="jit(program)/a_loss/transpose"}\n'
    hlo += "%t = (f32[4]{0}, s32[4]{0}) all-gather-start(%a, %b), dimensions={0}, "
    hlo += 'metadata={op_name="jit(program)/another/sum"}'
    gathers = worker.all_gathers(hlo)
    assert gathers == [
        ("f32[16,160]{1,0}", "jit(program)/a_loss/transpose"),
        ("(f32[4]{0}, s32[4]{0})", "jit(program)/another/sum"),
    ]
    shapes = [shape for shape, _ in gathers]
    assert _gathers({"all_gathers": shapes}, "both") == ["f32[16,160]{1,0}"]
    assert _gathers({"all_gathers": ["f32[32,6]{1,0}"]}, "data") == ["f32[32,6]{1,0}"]
