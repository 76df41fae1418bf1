"""Fused `linear_softmax_cross_entropy` against the unfused `x @ w` + optax loss.

For each `[tokens, vocab]` shape of the registry, hidden size and dtype, this
measures the forward pass and `value_and_grad` (in `x` and `w`) of

* `fused`: `jwxent.linear_softmax_cross_entropy(x, w, labels, reduction="mean")`,
* `unfused`: `optax.softmax_cross_entropy_with_integer_labels(x @ w, labels).mean()`,

with XLA's `memory_analysis()` temp bytes and wall-clock times, and prints a
Markdown table with the ratios against the bars of SPEC §8 (temp memory
≤ 1/8 and time ≤ 1.3× of unfused, forward+backward). Records go to a JSON-lines
file (see `benchmarks/harness.py`).

    python -m benchmarks.bench_fused_linear                      # 8192 x 32000, hidden 256 and 1024
    python -m benchmarks.bench_fused_linear --tokens 4096 --hidden 512
    python -m benchmarks.bench_fused_linear --shapes tiny --hidden 32 --repeats 2   # smoke
    python -m benchmarks.bench_fused_linear --memory-only        # compile only, no timing
"""

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jwxent
from benchmarks import harness, shapes

MEMORY_BAR = 1 / 8
TIME_BAR = 1.3
RESULTS = Path(__file__).resolve().parent / "results" / "fused_linear.jsonl"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One benchmark point: `x: [tokens, hidden]`, `w: [hidden, vocab]`."""

    shape: str
    tokens: int
    hidden: int
    vocab: int
    dtype: str

    @property
    def name(self) -> str:
        return f"{self.tokens}x{self.hidden}x{self.vocab}/{self.dtype}"


def fused(params: tuple[jax.Array, jax.Array], labels: jax.Array) -> jax.Array:
    x, w = params
    return jwxent.linear_softmax_cross_entropy(x, w, labels, reduction="mean")


def unfused(params: tuple[jax.Array, jax.Array], labels: jax.Array) -> jax.Array:
    x, w = params
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x @ w, labels))


def _inputs(problem: Problem) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    rng = np.random.default_rng(0)
    dtype = shapes.DTYPES[problem.dtype]
    x = rng.standard_normal((problem.tokens, problem.hidden), np.float32)
    w = rng.standard_normal((problem.hidden, problem.vocab), np.float32) / np.sqrt(problem.hidden)
    labels = rng.integers(0, problem.vocab, problem.tokens).astype(np.int32)
    return (jnp.asarray(x, dtype), jnp.asarray(w, dtype)), jnp.asarray(labels)


def _cases() -> dict[str, Callable[..., Any]]:
    return {
        "fused/fwd": fused,
        "unfused/fwd": unfused,
        "fused/fwd+bwd": harness.value_and_grad(fused),
        "unfused/fwd+bwd": harness.value_and_grad(unfused),
    }


def _memory_only(cases: dict[str, Callable[..., Any]], args: Sequence[Any]) -> list[dict]:
    """Temp bytes of each compiled case, without running it."""
    records = []
    for name, fn in cases.items():
        analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
        records.append({"case": name, "temp_bytes": int(analysis.temp_size_in_bytes)})
    return records


def measure(problem: Problem, *, repeats: int, warmup: int, memory_only: bool) -> list[dict]:
    args = _inputs(problem)
    if memory_only:
        records = _memory_only(_cases(), args)
    else:
        records = harness.measure_cases(_cases(), args, repeats=repeats, warmup=warmup)
    return [{**dataclasses.asdict(problem), "problem": problem.name, **r} for r in records]


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def table(records: Sequence[dict]) -> str:
    """Markdown: per problem and pass, temp MiB and time of fused vs unfused."""
    by_key = {(r["problem"], r["case"]): r for r in records}
    timed = all("median_s" in r for r in records)
    header = "| x · w (tokens × hidden × vocab) | dtype | pass | temp MiB fused / unfused | ratio |"
    rule = "| --- | --- | --- | --- | --- |"
    if timed:
        header += " ms fused / unfused | ratio |"
        rule += " --- | --- |"
    lines = [header, rule]
    for problem in dict.fromkeys(r["problem"] for r in records):
        for step in ("fwd", "fwd+bwd"):
            f, u = by_key[problem, f"fused/{step}"], by_key[problem, f"unfused/{step}"]
            shape, dtype = problem.split("/")
            memory = f["temp_bytes"] / max(u["temp_bytes"], 1)
            row = f"| {shape.replace('x', ' × ')} | {dtype} | {step} | "
            row += f"{_mib(f['temp_bytes'])} / {_mib(u['temp_bytes'])} | {memory:.3f} |"
            if timed:
                speed = f["median_s"] / u["median_s"]
                row += f" {1e3 * f['median_s']:,.1f} / {1e3 * u['median_s']:,.1f} | {speed:.2f} |"
            lines.append(row)
    return "\n".join(lines)


def bars(records: Sequence[dict]) -> list[str]:
    """The SPEC §8 bars (forward+backward) that a problem misses."""
    by_key = {(r["problem"], r["case"]): r for r in records}
    misses = []
    for problem in dict.fromkeys(r["problem"] for r in records):
        f, u = by_key[problem, "fused/fwd+bwd"], by_key[problem, "unfused/fwd+bwd"]
        if f["temp_bytes"] > MEMORY_BAR * u["temp_bytes"]:
            misses.append(f"{problem}: temp memory {f['temp_bytes'] / u['temp_bytes']:.3f} > 1/8")
        if "median_s" in f and f["median_s"] > TIME_BAR * u["median_s"]:
            misses.append(f"{problem}: time {f['median_s'] / u['median_s']:.2f} > {TIME_BAR}")
    return misses


def _problems(args: argparse.Namespace) -> list[Problem]:
    problems = []
    for shape in shapes.select(args.shapes):
        tokens = args.tokens or shape.batch
        for hidden in args.hidden:
            for dtype in args.dtypes:
                problems.append(Problem(shape.name, tokens, hidden, shape.classes, dtype))
    return problems


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["8192x32000"], help="names or tags")
    parser.add_argument("--tokens", type=int, default=None, help="override the shapes' batch")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--dtypes", nargs="+", default=["f32", "bf16"], choices=shapes.DTYPES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--memory-only", action="store_true", help="compile, do not time")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    records = []
    for problem in _problems(args):
        records += measure(
            problem, repeats=args.repeats, warmup=args.warmup, memory_only=args.memory_only
        )
        print(f"measured {problem.name}", flush=True)
    harness.write_jsonl(args.output, records, append=True)
    env = harness.environment()
    print(f"\n{env['device']} ({env['platform']}), jax {env['jax']}, git {env['git_sha']}\n")
    print(table(records))
    for miss in bars(records):
        print(f"MISSES BAR: {miss}")


if __name__ == "__main__":
    main()
