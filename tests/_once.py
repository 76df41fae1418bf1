"""A session result computed once per test run, however many pytest-xdist workers ask.

pytest-xdist runs session fixtures once per worker. The multi-process launch
and the sharding subprocesses cost tens of seconds of CPU each, so the first
worker to ask computes the result and writes it as JSON next to the other
workers' temporary directories; the others wait for that file.
"""

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def once_per_run(
    factory: pytest.TempPathFactory, name: str, compute: Callable[[], Any], timeout: float
) -> Any:
    """`compute()` (JSON-able), computed by one worker of this run and read by the rest."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return compute()
    # `.../pytest-N/popen-gwK`: the parent is this run's, shared by its workers.
    root: Path = factory.getbasetemp().parent
    result, lock = root / f"{name}.json", root / f"{name}.lock"
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return _wait_for(result, name, timeout)
    try:
        value = {"value": compute()}
    except Exception as error:
        value = {"error": f"{type(error).__name__}: {error}"}
        raise
    finally:
        partial = result.with_suffix(".partial")
        partial.write_text(json.dumps(value))
        partial.replace(result)
    return value["value"]


def _wait_for(result: Path, name: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not result.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: no result from the worker computing it in {timeout:.0f} s")
        time.sleep(0.1)
    value = json.loads(result.read_text())
    if "error" in value:
        raise RuntimeError(f"{name} failed in another worker: {value['error']}")
    return value["value"]
