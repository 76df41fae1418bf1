"""Runs the benchmarks of every loss family and writes JSON lines.

Every `benchmarks/bench_*.py` module defines a `FAMILY` (`harness.Family`);
this runner measures the selected families at the selected shapes and dtypes
on one device, one record per case (`harness.RECORD`), writes them and prints
the tables that `python -m benchmarks.render` puts into `docs/benchmarks.md`.

    python -m benchmarks.run                          # every family at the full sizes
    python -m benchmarks.run --sizes tiny --repeats 1 --warmup 0    # smoke run
    python -m benchmarks.run --families softmax/int fused --dtypes bf16 \\
        --sizes 8192x32000 8192x256x32000 --out /tmp/bf16.jsonl
    python -m benchmarks.run --families fused --repeats 0     # temp memory only, no timing
    python -m benchmarks.run --device gpu             # adds the HBM floor (copy bandwidth)
    python -m benchmarks.run --target h100            # compiled for an H100 here, not run
    python -m benchmarks.run --target tpu-v5e --families fused --sizes accel --dtypes bf16

`--sizes` takes names or tags of `benchmarks/shapes.py`; a family runs at the
ones its registry has (`tiny`, `ci` and `full` exist in both). Without `--out`
the records go to `benchmarks/results/<machine>.jsonl`.

`--target` (`h100`, `h200`, `tpu-v5e`, `tpu-v6e`) compiles every case for that
accelerator on this CPU host (`benchmarks/aot.py`: needs the `aot-gpu` or
`aot-tpu` extra) and records temp memory, traffic, matmul flops and the
roofline estimate instead of times, to `benchmarks/results/<target>.jsonl`.
"""

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax

from benchmarks import ORDER, aot, families, floor, harness, render, shapes

RESULTS = Path(__file__).resolve().parent / "results"

Selection = dict[str, set[str] | None]


def parse_selection(items: list[str], known: dict[str, harness.Family]) -> Selection:
    """`["softmax/int", "fused"]` -> `{"softmax": {"int"}, "fused": None}` (None: every loss).

    Raises:
      ValueError: an unknown family or loss.
    """
    selection: Selection = {}
    for item in items:
        name, _, loss = item.partition("/")
        family = known.get(name)
        if family is None:
            raise ValueError(f"unknown family {name!r}; known: {list(known)}")
        if loss and family.variant(loss) is None:
            raise ValueError(
                f"unknown loss {item!r}; {name} has {[v.name for v in family.variants]}"
            )
        losses = selection.get(name, set())
        selection[name] = None if losses is None or not loss else losses | {loss}
    return selection


def pick_device(kind: str) -> jax.Device:
    """The first device of platform `kind` (`cpu`, `gpu`, `tpu`), or JAX's default for `auto`.

    Raises:
      ValueError: JAX has no such device.
    """
    if kind == "auto":
        return jax.devices()[0]
    try:
        return jax.devices(kind)[0]
    except RuntimeError as error:
        raise ValueError(f"no {kind} device: {error}") from None


def default_out(device: jax.Device) -> Path:
    """`benchmarks/results/<machine>.jsonl`, e.g. `cpu-amd-epyc.jsonl`, `gpu-nvidia-h200.jsonl`."""
    env = harness.environment(device)
    cpu = env["platform"] == "cpu"
    name = f"cpu-{env['cpu']}" if cpu else f"{env['platform']}-{env['device']}"
    return RESULTS / (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".jsonl")


def on_accelerator(device: jax.Device) -> bool:
    """Whether the HBM floor applies: the device has its own memory (a GPU or TPU)."""
    return device.platform != "cpu"


def measure(
    selection: Selection,
    args: argparse.Namespace,
    device: jax.Device,
    progress: Callable[[str], None],
) -> list[harness.Record]:
    """Every selected family at its selected shapes, then its HBM floor on accelerators."""
    known = families()
    floored = any(known[name].extra_cases.keys() >= floor.CASES.keys() for name in selection)
    bandwidth = None
    if on_accelerator(device) and args.repeats > 0 and floored:
        bandwidth = floor.copy_bandwidth(device)
        progress(f"copy bandwidth: {bandwidth / 1e9:.0f} GB/s")
    records = []
    for name, losses in selection.items():
        family = known[name]
        measured = harness.run_family(
            family,
            shapes.select(args.sizes, family.registry, strict=False),
            args.dtypes,
            losses=losses,
            repeats=args.repeats,
            warmup=args.warmup,
            device=device,
            progress=progress,
        )
        records += measured
        if bandwidth is not None:
            records += floor.hbm_records(measured, bandwidth)
    return records


def measure_target(
    selection: Selection, args: argparse.Namespace, progress: Callable[[str], None]
) -> list[harness.Record]:
    """Every selected family compiled for `args.target` at its selected shapes."""
    known = families()
    records = []
    for name, losses in selection.items():
        family = known[name]
        records += aot.run_family(
            family,
            shapes.select(args.sizes, family.registry, strict=False),
            args.dtypes,
            args.target,
            losses=losses,
            progress=progress,
        )
    return records


def _summary_line(record: harness.Record) -> str:
    if record.get("est_s") is not None:
        return (
            f"{record['family']:>8} {record['shape']:>16} {record['dtype']:>4}"
            f" {record['case']:<28} est {1e3 * record['est_s']:>10.3f} ms"
            f"  traffic {record['traffic_bytes'] / 1e9:>9.3f} GB"
            f"  temp {record['temp_bytes'] / 2**20:>10.2f} MiB"
        )

    median, temp = record["median_s"], record["temp_bytes"]
    time_text = "–" if median is None else f"{1e3 * median:.3f} ms"
    temp_text = "–" if temp is None else f"{temp / 2**20:.2f} MiB"
    return (
        f"{record['family']:>8} {record['shape']:>16} {record['dtype']:>4}"
        f" {record['case']:<28} median {time_text:>13}  temp {temp_text:>13}"
    )


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_argument(
        "--families",
        "--losses",
        nargs="+",
        metavar="FAMILY[/LOSS]",
        help=f"families ({', '.join(ORDER)}) or single losses, e.g. softmax/int (default: all)",
    )
    cli.add_argument(
        "--sizes",
        nargs="+",
        default=["full"],
        metavar="NAME_OR_TAG",
        help="shapes of benchmarks/shapes.py: full (default), ci, tiny, 8192x32000, ...",
    )
    cli.add_argument("--dtypes", nargs="+", default=list(shapes.DTYPES), choices=shapes.DTYPES)
    cli.add_argument("--repeats", type=int, default=3, help="timed rounds (0: memory only)")
    cli.add_argument("--warmup", type=int, default=1, help="untimed calls per case")
    cli.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "gpu", "tpu"), help="default: auto"
    )
    cli.add_argument(
        "--target",
        choices=list(aot.TOPOLOGIES),
        help="compile for this accelerator on the CPU host, run nothing (needs an aot extra)",
    )
    cli.add_argument("--out", type=Path, help="JSON-lines file (default: results/<machine>.jsonl)")
    cli.add_argument("--append", action="store_true", help="append to --out instead of replacing")
    return cli


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    unknown = set(args.sizes) - shapes.known()
    if unknown:
        cli.error(f"unknown --sizes {sorted(unknown)}; known: {sorted(shapes.known())}")
    if args.repeats < 0:
        cli.error("--repeats must be at least 0")
    if args.target:
        # The compile-only device needs the accelerator's plugin, but JAX itself on the CPU.
        jax.config.update("jax_platforms", "cpu")
    try:
        known = families()
        selection = parse_selection(args.families or list(known), known)
        device = aot.device(args.target) if args.target else pick_device(args.device)
    except ValueError as error:
        cli.error(str(error))
    start = time.perf_counter()
    progress = lambda line: print(line, file=sys.stderr, flush=True)
    if args.target:
        env = aot.environment(args.target)
        records = [{**env, **r} for r in measure_target(selection, args, progress)]
        out = args.out or RESULTS / f"{args.target}.jsonl"
    else:
        records = harness.with_environment(measure(selection, args, device, progress), device)
        out = args.out or default_out(device)
    harness.write_jsonl(out, records, append=args.append)
    for record in records:
        print(_summary_line(record))
    print(f"\n{render.render(records)}\n")
    print(f"wrote {len(records)} records to {out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
