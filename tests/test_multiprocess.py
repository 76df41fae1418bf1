"""Real multi-process runs: 2 JAX processes of 4 CPU devices each, one global mesh.

One launch of `tests/_multiprocess_worker.py` serves every case (see its
docstring): each process initialises `jax.distributed` on loopback, builds
global arrays from its own part of the inputs and compares every shard it
holds with the whole batch computed on one of its devices. Here each case is
held to the tolerances below, and the processes must agree with each other
exactly on every scalar (loss values, estimator state).

`launch` is the harness: free port, timeout, the other workers killed as
soon as one fails, and an error that names the failed process.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._once import once_per_run

ROOT = Path(__file__).resolve().parent.parent
NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 4
TIMEOUT_S = 240.0
# f32 against one device: values to 1e-6 and gradients to 1e-5, relative to
# the largest magnitude of the array (a per-element ratio means nothing for
# the entries of a gradient that are near 0).
VALUE_RTOL, GRAD_RTOL = 1e-6, 1e-5

AXIS_TYPES = ("auto", "explicit")
JIT_CASES = (
    "data_parallel_ce",
    "vocab_parallel_ce/both",
    "vocab_parallel_ce/class",
    "fused/w_over_vocab",
    "fused/tokens_over_processes",
    "probability_labels",
    "focal",
    "sigmoid_pos_weight",
    "class_statistics",
    "shard_map_counts",
    "train_step",
    "eager_counts",
)
SHARD_MAP_VARIANTS = ("class_weights", "label_smoothing", "probability_labels")
# Inside `shard_map` the class weights are closed over with `Auto` axes and a
# replicated argument with `Explicit` ones (JAX rejects the closure there).
CASES = (
    [f"{a}/{c}" for a in AXIS_TYPES for c in JIT_CASES]
    + [f"auto/shard_map_closed/{v}" for v in SHARD_MAP_VARIANTS]
    + [f"explicit/shard_map_argument/{v}" for v in SHARD_MAP_VARIANTS]
)

# Stand-ins for a worker that crashes or hangs, for the harness's own tests.
FAULTS = {"die": "raise SystemExit(3)", "hang": "import time; time.sleep(3600)"}

pytestmark = pytest.mark.xdist_group("multiprocess")


class WorkerFailed(RuntimeError):
    """A worker process exited with an error or did not finish in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    """The end of a worker's stderr, without gloo's connection chatter."""
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if not line.startswith("[Gloo]"))[-chars:]


def launch(
    out: Path,
    num_processes: int = NUM_PROCESSES,
    *,
    fault: tuple[int, str] | None = None,
    timeout: float = TIMEOUT_S,
) -> list[dict]:
    """Runs the workers; returns each process's results (`process_I.json`).

    Raises `WorkerFailed` naming the process as soon as one exits non-zero
    (the others are killed), or naming those still running after `timeout`
    seconds. `fault=(i, "die")` replaces process `i` by one that exits with
    code 3 at once, `(i, "hang")` by one that sleeps (the harness's own tests).
    """
    port = free_port()
    flags = os.environ.get("XLA_FLAGS", "")  # The suite's fast-compile flags.
    flags += f" --xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    workers = []
    with contextlib.ExitStack() as files:
        try:
            for i in range(num_processes):
                command = [sys.executable, "-m", "tests._multiprocess_worker"]
                command += ["--process-id", str(i), "--num-processes", str(num_processes)]
                command += ["--port", str(port), "--out", str(out)]
                if fault is not None and fault[0] == i:
                    command = [sys.executable, "-c", FAULTS[fault[1]]]
                stderr = files.enter_context((out / f"stderr_{i}.txt").open("w"))
                workers.append(
                    subprocess.Popen(
                        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
                    )
                )
            _wait(workers, out, timeout)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
    return [json.loads((out / f"process_{i}.json").read_text()) for i in range(num_processes)]


def _wait(workers: list[subprocess.Popen], out: Path, timeout: float) -> None:
    """Until every worker exits 0; raises at the first failure or at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = [w.poll() for w in workers]
        for i, code in enumerate(codes):
            if code not in (None, 0):
                raise WorkerFailed(
                    f"process {i} of {len(workers)} exited with code {code}; its stderr ends:\n"
                    + _tail(out / f"stderr_{i}.txt")
                )
        if all(code == 0 for code in codes):
            return
        time.sleep(0.05)
    running = [i for i, w in enumerate(workers) if w.poll() is None]
    tails = "\n".join(f"process {i}:\n{_tail(out / f'stderr_{i}.txt')}" for i in running)
    raise WorkerFailed(f"processes {running} still running after {timeout:.0f} s:\n{tails}")


@pytest.fixture(scope="session")
def results(tmp_path_factory) -> list[dict]:
    """One launch for every case of this module, shared by the pytest-xdist workers."""

    def run() -> list[dict]:
        start = time.perf_counter()
        runs = launch(tmp_path_factory.mktemp("multiprocess"))
        print(f"multi-process launch: {time.perf_counter() - start:.1f} s")
        return [run["cases"] for run in runs]

    return once_per_run(tmp_path_factory, "multiprocess", run, timeout=2 * TIMEOUT_S)


def _relative(report: dict, group: str) -> dict[str, float]:
    return {name: diff / scale if scale else diff for name, (diff, scale) in report[group].items()}


def test_every_process_ran_every_case(results):
    for process, cases in enumerate(results):
        missing = sorted(set(CASES) - set(cases))
        assert not missing, f"process {process} did not run {missing}"


@pytest.mark.parametrize("case", CASES)
def test_each_process_matches_one_device(results, case):
    for process, cases in enumerate(results):
        report = cases[case]
        assert "error" not in report, f"process {process}: {report['error']}"
        values, grads = _relative(report, "values"), _relative(report, "grads")
        assert values, "no value compared"
        bad = {k: v for k, v in values.items() if v > VALUE_RTOL}
        bad |= {f"d{k}": v for k, v in grads.items() if v > GRAD_RTOL}
        assert not bad, f"process {process}: relative differences {bad}"


@pytest.mark.parametrize("case", CASES)
def test_every_process_holds_the_same_numbers(results, case):
    """Scalars (losses) and the estimator's state are identical on every process."""
    first = results[0][case]
    for process, cases in enumerate(results[1:], start=1):
        assert cases[case].get("scalars") == first.get("scalars"), f"process {process}"
        assert cases[case].get("state") == first.get("state"), f"process {process}"


def test_the_estimator_state_is_the_global_batch_s(results):
    """After the steps, the EMA equals one device's, which saw the whole batch."""
    for axis_type in AXIS_TYPES:
        for case in ("class_statistics", "train_step"):
            report = results[0][f"{axis_type}/{case}"]
            assert report["state"], case
            diff, scale = report["values"]["ema"]
            assert diff <= VALUE_RTOL * scale, (axis_type, case)


def test_class_weights_that_differ_between_processes(results):
    """`assert_equal` names the mismatch; the loss mixes each process's weights.

    Nothing checks a replicated input's agreement: each device weights its
    own examples with its own process's copy, and the sum is all-reduced, so
    every process reports the same loss, which is neither process's.
    """
    report = results[0]["mismatched_class_weights"]
    assert "error" not in report, report.get("error")
    assert report["assert_equal"].startswith("class_weights"), report["assert_equal"]
    value = report["scalars"]["sum"]
    assert value == pytest.approx(report["each_process_own_weights"], rel=1e-6)
    assert value != pytest.approx(report["first_process_weights"], rel=1e-3)
    assert results[1]["mismatched_class_weights"]["scalars"] == report["scalars"]


def test_a_worker_that_dies_fails_the_launch_fast_and_is_named(tmp_path):
    start = time.monotonic()
    with pytest.raises(WorkerFailed, match=r"process 1 of 2 exited with code 3"):
        launch(tmp_path, fault=(1, "die"), timeout=60)
    assert time.monotonic() - start < 10


def test_a_worker_that_hangs_is_named_at_the_timeout(tmp_path):
    """Process 1 sleeps; process 0 waits for it at the coordinator: both are named."""
    start = time.monotonic()
    with pytest.raises(WorkerFailed, match=r"processes \[0, 1\] still running after 2 s"):
        launch(tmp_path, fault=(1, "hang"), timeout=2)
    assert time.monotonic() - start < 10
