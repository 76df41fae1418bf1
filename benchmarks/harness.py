"""A small timing harness: compile once, warm up, time round-robin, record JSON lines.

The API, in the order a benchmark script uses it:

* `measure_cases(cases, args, *, repeats, warmup) -> list[dict]` jits and
  compiles every case once (compilation timed separately), reads
  `compiled.memory_analysis()`, runs each case `warmup` times, then times
  `repeats` rounds in which every case runs once, round-robin, so that all
  cases see the same machine noise. With `primed` (the default) every timed
  call directly follows an untimed call of the same case, so that the work
  the runtime does after a call returns (freeing large buffers) is charged
  to the case that caused it, not to its neighbour. One record per case:
  `{"case", "compile_s", "min_s", "median_s", "p10_s", "p90_s", "repeats",
  "temp_bytes", "argument_bytes", "output_bytes"}`.
* `value_and_grad(loss)` turns a scalar loss of its first argument into the
  forward+backward case (`jax.value_and_grad(loss)`).
* `environment()` describes the run: device, platform, CPU model, core count,
  jax / jaxlib versions, git SHA and UTC date.
* `write_jsonl(path, records, *, append=False)` writes one JSON object per
  line, each record merged with `environment()`; `read_jsonl(path)` reads them
  back.

Example:

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((8, 16), jnp.float32)
    >>> records = measure_cases({"sum": jnp.sum, "max": jnp.max}, (x,), repeats=3, warmup=1)
    >>> sorted(r["case"] for r in records)
    ['max', 'sum']

Each case is called as `case(*args)`; give every case the same arguments (use
a closure or ignore an argument when a case needs fewer). Times are wall-clock
seconds per call, measured with `jax.block_until_ready` on the outputs.
"""

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jaxlib
import numpy as np

Record = dict[str, Any]


def value_and_grad(loss: Callable[..., jax.Array]) -> Callable[..., Any]:
    """The forward+backward case of a scalar `loss`: value and gradient in its first argument."""
    return jax.value_and_grad(loss)


def _compile(fn: Callable[..., Any], args: Sequence[Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def _memory(compiled: Any) -> dict[str, int | None]:
    """Temp, argument and output bytes from XLA's memory analysis (None if unavailable)."""
    analysis = compiled.memory_analysis()
    names = ("temp", "argument", "output")
    if analysis is None:
        return {f"{name}_bytes": None for name in names}
    return {f"{name}_bytes": int(getattr(analysis, f"{name}_size_in_bytes")) for name in names}


def _time_once(compiled: Any, args: Sequence[Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return time.perf_counter() - start


def _summary(times: list[float]) -> dict[str, float]:
    p10, p90 = np.percentile(times, [10, 90])
    return {
        "min_s": min(times),
        "median_s": statistics.median(times),
        "p10_s": float(p10),
        "p90_s": float(p90),
    }


def measure_cases(
    cases: dict[str, Callable[..., Any]],
    args: Sequence[Any],
    *,
    repeats: int = 10,
    warmup: int = 2,
    primed: bool = True,
) -> list[Record]:
    """Compiles, warms up and times every case on `args`, round-robin.

    Args:
      cases: name -> function of `*args`. Each is wrapped in `jax.jit`.
      args: the arguments every case is called with (device arrays).
      repeats: timed rounds; each round calls every case once.
      warmup: untimed calls of each case before the first round.
      primed: precede every timed call by an untimed call of the same case.
        The CPU runtime frees large buffers in the background after a call
        returns; that work lands in whatever runs next (up to ~0.5 s after a
        case that frees 3 GB). Primed, each case pays for its own buffers, as
        it does in a loop that repeats one step.

    Returns:
      One record per case, in the order of `cases` (see the module docstring).
    """
    if repeats < 1:
        raise ValueError(f"`repeats` must be at least 1; got {repeats}.")
    compiled, records = {}, {}
    for name, fn in cases.items():
        compiled[name], compile_s = _compile(fn, args)
        records[name] = {"case": name, "compile_s": compile_s, **_memory(compiled[name])}
    for name in cases:
        for _ in range(warmup):
            _time_once(compiled[name], args)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name in cases:
            if primed:
                _time_once(compiled[name], args)
            times[name].append(_time_once(compiled[name], args))
    return [{**records[name], **_summary(times[name]), "repeats": repeats} for name in cases]


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> Record:
    """Where and when the benchmark ran: device, CPU, versions, git SHA, UTC date."""
    device = jax.devices()[0]
    return {
        "device": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "git_sha": _git_sha(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def write_jsonl(path: str | Path, records: Iterable[Record], *, append: bool = False) -> None:
    """Writes each record, merged with `environment()`, as one JSON line."""
    env = environment()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as f:
        for record in records:
            f.write(json.dumps({**env, **record}) + "\n")


def read_jsonl(path: str | Path) -> list[Record]:
    """The records of a JSON-lines file written by `write_jsonl`."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
