"""Runs the softmax benchmark and writes JSON lines.

    python -m benchmarks.run                      # the full sizes, ~10 minutes on 2 cores
    python -m benchmarks.run --sizes tiny         # a smoke run in seconds
    python -m benchmarks.run --out benchmarks/results/cpu.jsonl --sizes 8192x32000 --dtypes bf16

Then `python -m benchmarks.render` turns `benchmarks/results/*.jsonl` into the
table of `docs/benchmarks.md` and the plot `docs/img/benchmarks.png`.
"""

import argparse
import re
import sys
import time
from pathlib import Path

from benchmarks import bench_softmax, harness
from benchmarks.shapes import DTYPES, select

RESULTS = Path(__file__).resolve().parent / "results"


def default_out() -> Path:
    """`benchmarks/results/<device>.jsonl`, e.g. `cpu-amd-epyc.jsonl`."""
    env = harness.environment()
    cpu = env["platform"] == "cpu"
    name = f"cpu-{env['cpu']}" if cpu else f"{env['platform']}-{env['device']}"
    return RESULTS / (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".jsonl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON-lines file to write")
    parser.add_argument("--sizes", nargs="+", default=["full"], help="shape names or tags")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--losses", nargs="+", default=list(bench_softmax.LOSSES))
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per case")
    args = parser.parse_args(argv)

    out = args.out or default_out()
    start = time.perf_counter()
    records = bench_softmax.run(
        select(args.sizes),
        args.dtypes,
        losses=args.losses,
        repeats=args.repeats,
        warmup=args.warmup,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    harness.write_jsonl(out, records)
    for record in records:
        print(
            f"{record['shape']:>12} {record['dtype']:>4} {record['case']:<18}"
            f" median {1e3 * record['median_s']:9.2f} ms"
            f"  temp {record['temp_bytes'] / 2**20:9.1f} MiB"
        )
    print(f"wrote {len(records)} records to {out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
