"""A small timing harness: loss families, compile once, time round-robin, JSON lines.

The API, in the order a benchmark uses it:

* `Family` and `Variant` describe what a `bench_*.py` module measures: a
  family has one input maker and a list of variants (losses); a variant has
  jwxent's function and the functions it is compared with, all of the
  family's inputs, and the modes it is timed in (`"fwd"`,
  `"value_and_grad"`). `build_cases(family)` turns them into named cases
  `"loss/impl/mode"` (plus the family's `extra_cases`, such as the floor).
* `run_family(family, shapes, dtypes, ...)` measures every case at every shape
  and dtype on one device and returns one `Record` per case (see `RECORD`).
* `measure_cases(cases, args, *, repeats, warmup)` jits and compiles every
  case once (compilation timed separately), reads
  `compiled.memory_analysis()`, runs each case `warmup` times, then times
  `repeats` rounds in which every case runs once, round-robin, so that all
  cases see the same machine noise. With `primed` (the default) every timed
  call directly follows an untimed call of the same case, so that the work
  the runtime does after a call returns (freeing large buffers) is charged
  to the case that caused it, not to its neighbour. `repeats=0` compiles
  only: the memory fields are filled, the times are `None`.
* `environment(device)` describes the run: device kind, platform, CPU model,
  core count, jax / jaxlib versions, git SHA and UTC date.
* `with_environment(records, device)` merges `environment(device)` into each
  record; `write_jsonl(path, records, *, append)` writes one JSON object per
  line and `read_jsonl(path)` reads them back.

Example:

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((8, 16), jnp.float32)
    >>> records = measure_cases({"sum": jnp.sum, "max": jnp.max}, (x,), repeats=3, warmup=1)
    >>> sorted(r["case"] for r in records)
    ['max', 'sum']
    >>> [r["value"] for r in records]
    [128.0, 1.0]

Each case is called as `case(*args)`; give every case the same arguments (a
case ignores the ones it does not need). Times are wall-clock seconds per call,
measured with `jax.block_until_ready` on the outputs.
"""

import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jaxlib
import numpy as np

from benchmarks.bars import Bar
from benchmarks.shapes import DTYPES, SHAPES, LinearShape, Shape

Record = dict[str, Any]
Case = Callable[..., Any]

FWD, VALUE_AND_GRAD = "fwd", "value_and_grad"
MODES: dict[str, Callable[[Case], Case]] = {
    FWD: lambda loss: loss,
    # The forward+backward case of a scalar loss: value and gradient in its first argument.
    VALUE_AND_GRAD: jax.value_and_grad,
}

COMPILER_OPTIONS: dict[str, Any] = {}
"""XLA options every case is compiled with (none: XLA's defaults, what users get)."""

_MEMORY = "bytes, from XLA's `compiled.memory_analysis()` (None if it has none)"
_TIME = "seconds per call over the `repeats` rounds (None if 0)"
RECORD: dict[str, str] = {
    "family": "the `name` of the `Family` (`softmax`, `soft`, `focal`, `sigmoid`, `fused`)",
    "case": "`loss/impl/mode`, unique within a family, shape and dtype",
    "loss": "the variant (`int`, `smooth`, ...), or `floor`",
    "impl": "`jwxent`, a baseline (`optax`, `naive`, `jnp`, `unfused`) or a floor",
    "mode": "`fwd` or `value_and_grad`",
    "shape": "the registry name of the shape (`benchmarks/shapes.py`)",
    "batch": "rows of the logits (tokens for `fused`)",
    "classes": "columns of the logits (vocabulary for `fused`, which also has `hidden`)",
    "dtype": "`f32` or `bf16`: of the logits (of `x` and `w` for `fused`)",
    "compile_s": "seconds to lower and compile the jitted case",
    "temp_bytes": _MEMORY,
    "argument_bytes": _MEMORY,
    "output_bytes": _MEMORY,
    "min_s": _TIME,
    "median_s": _TIME,
    "p10_s": _TIME,
    "p90_s": _TIME,
    "repeats": "timed rounds",
    "value": "the loss (first output, if a scalar) of the first timed call",
    "device": "device kind (`cpu`, `NVIDIA H200`, `TPU v5 lite`)",
    "platform": "`cpu`, `gpu` or `tpu`",
    "device_count": "devices of that platform",
    "cpu": "host CPU model",
    "cpu_count": "host CPU cores",
    "jax": "jax version",
    "jaxlib": "jaxlib version",
    "git_sha": "commit of the working tree (None outside git)",
    "date": "UTC date and time of the run",
}
"""Every field of a benchmark record, the same for every family, and what it holds."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One loss of a family: jwxent's function and the functions it is compared with.

    Attributes:
      name: the `loss` field of the records, e.g. `"int"`.
      jwxent: a scalar loss of the family's inputs, computed by jwxent.
      baselines: impl name -> the same loss written without jwxent (optax with
        the same weighting by hand, a naive `jnp` formula, ...).
      modes: what is timed, among `MODES`.
      bars: the performance bars a table row of this variant is checked against
        (`benchmarks/bars.py`).
    """

    name: str
    jwxent: Case
    baselines: Mapping[str, Case]
    modes: tuple[str, ...] = (VALUE_AND_GRAD,)
    bars: tuple[Bar, ...] = ()


@dataclasses.dataclass(frozen=True)
class Family:
    """A group of losses measured on the same inputs: what one `bench_*.py` module defines.

    Attributes:
      name: the `family` field of the records (`--families` selects by it).
      title: the heading of the family's table.
      make_inputs: `(shape, dtype) -> tuple of arrays`, the arguments of every
        case (NumPy arrays from `benchmarks/inputs.py`; they are put on the device).
      variants: the losses, in table order.
      reference: the baseline every variant has and the ratios are taken to.
      registry: where the family's shapes come from (`SHAPES` or `LINEAR_SHAPES`).
      extra_cases: case name -> function of the inputs, measured with the
        variants (the floor of the softmax families).
    """

    name: str
    title: str
    make_inputs: Callable[[Any, Any], tuple[Any, ...]]
    variants: tuple[Variant, ...]
    reference: str = "optax"
    registry: Mapping[str, Shape | LinearShape] = dataclasses.field(default_factory=lambda: SHAPES)
    extra_cases: Mapping[str, Case] = dataclasses.field(default_factory=dict)

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)


def build_cases(family: Family, losses: Iterable[str] | None = None) -> dict[str, Case]:
    """The timed functions of a family, by case name `loss/impl/mode`.

    Args:
      family: the family.
      losses: the variants to include (all by default). The family's
        `extra_cases` are always included.
    """
    wanted = None if losses is None else set(losses)
    cases: dict[str, Case] = {}
    for variant in family.variants:
        if wanted is not None and variant.name not in wanted:
            continue
        impls = {"jwxent": variant.jwxent, **variant.baselines}
        for mode in variant.modes:
            for impl, loss in impls.items():
                cases[f"{variant.name}/{impl}/{mode}"] = MODES[mode](loss)
    return {**cases, **family.extra_cases}


def run_family(
    family: Family,
    shapes: Iterable[Shape | LinearShape],
    dtypes: Iterable[str] = tuple(DTYPES),
    *,
    losses: Iterable[str] | None = None,
    repeats: int = 3,
    warmup: int = 1,
    device: jax.Device | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Record]:
    """Measures every case of `family` at every shape and dtype; one record per case.

    All cases of one shape and dtype are timed round-robin in one
    `measure_cases` call, so they share the machine's noise. The baselines are
    traced with JAX's default (standard) dtype and rank promotion, as users
    write them, whatever the global configuration.

    Args:
      family: what to measure.
      shapes: shapes of `family.registry`.
      dtypes: keys of `DTYPES`.
      losses: variants to include (all by default).
      repeats, warmup: see `measure_cases`.
      device: where the inputs are placed and the cases run (the default device
        if None).
      progress: called with a line of text before each shape and dtype.

    Returns:
      `measure_cases` records with `family`, `shape`, its `dims`, `dtype`,
      `loss`, `impl` and `mode` added (the fields of `RECORD` but
      the environment's).
    """
    cases = build_cases(family, losses)
    device = device or jax.devices()[0]
    records = []
    for shape in shapes:
        for dtype in dtypes:
            if progress is not None:
                progress(f"{family.name} {shape.name} {dtype}: {len(cases)} cases")
            args = jax.device_put(family.make_inputs(shape, DTYPES[dtype]), device)
            with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
                measured = measure_cases(cases, args, repeats=repeats, warmup=warmup)
            del args
            for record in measured:
                loss, impl, mode = record["case"].split("/")
                records.append(
                    {
                        "family": family.name,
                        "shape": shape.name,
                        **shape.dims,
                        "dtype": dtype,
                        "loss": loss,
                        "impl": impl,
                        "mode": mode,
                        **record,
                    }
                )
    return records


def _compile(fn: Case, args: Sequence[Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile(COMPILER_OPTIONS or None)
    return compiled, time.perf_counter() - start


def memory(compiled: Any) -> dict[str, int | None]:
    """Temp, argument and output bytes from XLA's memory analysis (None if unavailable)."""
    analysis = compiled.memory_analysis()
    names = ("temp", "argument", "output")
    if analysis is None:
        return {f"{name}_bytes": None for name in names}
    return {f"{name}_bytes": int(getattr(analysis, f"{name}_size_in_bytes")) for name in names}


def _call(compiled: Any, args: Sequence[Any]) -> tuple[float, Any]:
    """Seconds for one call, and its (ready) outputs."""
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return time.perf_counter() - start, out


def _scalar(out: Any) -> float | None:
    """The first output leaf as a float if it is a scalar (a loss), else None."""
    leaf = jax.tree.leaves(out)[0]
    return float(leaf) if np.size(leaf) == 1 else None


def _summary(times: list[float]) -> dict[str, float | None]:
    if not times:
        return dict.fromkeys(("min_s", "median_s", "p10_s", "p90_s"))
    p10, p90 = np.percentile(times, [10, 90])
    return {
        "min_s": min(times),
        "median_s": statistics.median(times),
        "p10_s": float(p10),
        "p90_s": float(p90),
    }


def measure_cases(
    cases: Mapping[str, Case],
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
      repeats: timed rounds; each round calls every case once. 0 compiles
        only (memory analysis, no times, no value).
      warmup: untimed calls of each case before the first round.
      primed: precede every timed call by an untimed call of the same case.
        The CPU runtime frees large buffers in the background after a call
        returns; that work lands in whatever runs next (up to ~0.5 s after a
        case that frees 3 GB). Primed, each case pays for its own buffers, as
        it does in a loop that repeats one step.

    Returns:
      One record per case, in the order of `cases`: `case`, `compile_s`,
      `temp_bytes`, `argument_bytes`, `output_bytes`, `min_s`, `median_s`,
      `p10_s`, `p90_s`, `repeats` and `value` (the first output if it is a
      scalar, from the first timed call).
    """
    if repeats < 0:
        raise ValueError(f"`repeats` must be at least 0; got {repeats}.")
    compiled, records = {}, {}
    for name, fn in cases.items():
        compiled[name], compile_s = _compile(fn, args)
        records[name] = {"case": name, "compile_s": compile_s, **memory(compiled[name])}
        records[name]["value"] = None
    for name in cases:
        for _ in range(warmup):
            _call(compiled[name], args)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name in cases:
            if primed:
                _call(compiled[name], args)
            seconds, out = _call(compiled[name], args)
            times[name].append(seconds)
            if records[name]["value"] is None:
                records[name]["value"] = _scalar(out)
            del out
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


def environment(device: jax.Device | None = None) -> Record:
    """Where and when the benchmark ran: device, host CPU, versions, git SHA, UTC date.

    Args:
      device: the device the cases ran on (the default device if None).
    """
    device = device or jax.devices()[0]
    return {
        "device": device.device_kind,
        "platform": device.platform,
        "device_count": len(jax.devices(device.platform)),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "git_sha": _git_sha(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def with_environment(records: Iterable[Record], device: jax.Device | None = None) -> list[Record]:
    """Each record merged with `environment(device)`: what a results file holds."""
    env = environment(device)
    return [{**env, **record} for record in records]


def write_jsonl(path: str | Path, records: Iterable[Record], *, append: bool = False) -> None:
    """Writes each record as one JSON line (see `with_environment`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def read_jsonl(path: str | Path) -> list[Record]:
    """The records of a JSON-lines file written by `write_jsonl`."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
