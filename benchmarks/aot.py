"""Compiles the benchmark cases for an accelerator that is not there, and counts their traffic.

XLA compiles for a GPU or TPU on a CPU-only host given a description of the
device: for a GPU, a target description text proto (`benchmarks/targets/*.txtpb`,
the published figures of the chip); for a TPU, a topology name. Nothing runs:
each case is traced on `jax.ShapeDtypeStruct`s placed on the compile-only
device, lowered and compiled, and the record holds XLA's
`memory_analysis()` bytes, the traffic and matmul flops counted from the
optimised HLO (`benchmarks/hlo_traffic.py`) and the roofline estimate.

Needs the compiler of the target: `pip install -e '.[aot-gpu]'` (`jax[cuda12]`)
or `'.[aot-tpu]'` (`jax[tpu]`), best in a venv of its own, and JAX on the CPU
(`JAX_PLATFORMS=cpu`; `benchmarks.run --target` sets it).

    python -m benchmarks.run --target h100 --families fused --sizes accel --dtypes bf16

Where one case's bytes go, kernel by kernel:

    python -m benchmarks.aot --target h100 --case fused/mean/jwxent/value_and_grad \\
        --size 8192x4096x128256 --dtype bf16
"""

import argparse
import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks import families, harness, hlo_traffic
from benchmarks.shapes import DTYPES, LinearShape, Shape

TARGET_FILES = Path(__file__).resolve().parent / "targets"


@dataclasses.dataclass(frozen=True)
class Topology:
    """How to get a compile-only device: a GPU target file or a TPU topology name."""

    platform: str
    gpu_config: str | None = None
    tpu_topology: str | None = None


TOPOLOGIES: dict[str, Topology] = {
    "h100": Topology("cuda", gpu_config="h100.txtpb"),
    "h200": Topology("cuda", gpu_config="h200.txtpb"),
    # A 2x2 slice is the smallest the TPU compiler describes; one chip of it is used.
    "tpu-v5e": Topology("tpu", tpu_topology="v5e:2x2"),
    "tpu-v6e": Topology("tpu", tpu_topology="v6e:2x2"),
}
"""Every `--target`; its peaks are `hlo_traffic.TARGETS[name]`."""

TARGET_RECORD: dict[str, str] = {
    "target": "the `--target` (`h100`, `tpu-v5e`, ...): compiled, not run",
    "traffic_bytes": "operand + result bytes of every kernel, times loop trip counts",
    "flops": "2·M·N·K of every matmul, times loop trip counts",
    "est_s": "roofline estimate: max(flops / peak, traffic / bandwidth)",
    "bound": "`compute` or `memory`: which side of the roofline `est_s` is",
}
"""The fields a target record has on top of `harness.RECORD` (whose times are None)."""


@functools.cache
def device(target: str) -> Any:
    """The compile-only device of `target` (a `jax.Device` that cannot run anything).

    Raises:
      ValueError: an unknown target, or JAX lacks the target's compiler.
    """
    if target not in TOPOLOGIES:
        raise ValueError(f"unknown target {target!r}; known: {list(TOPOLOGIES)}")
    from jax.experimental import topologies

    topology = TOPOLOGIES[target]
    try:
        if topology.gpu_config is not None:
            config = (TARGET_FILES / topology.gpu_config).read_text()
            desc = topologies.get_topology_desc(
                platform="cuda", target_config=config, topology="1x1x1"
            )
        else:
            desc = topologies.get_topology_desc(topology_name=topology.tpu_topology, platform="tpu")
    except Exception as error:  # each plugin fails its own way when it is missing
        extra = "aot-gpu" if topology.platform == "cuda" else "aot-tpu"
        raise ValueError(
            f"cannot compile for {target} ({error}); install the `{extra}` extra"
        ) from None
    return desc.devices[0]


def abstract(args: Any, where: Any) -> Any:
    """The arrays of `args` as `jax.ShapeDtypeStruct`s on device `where`."""
    sharding = jax.sharding.SingleDeviceSharding(where)
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=sharding), args
    )


def compile_case(fn: harness.Case, avals: Sequence[Any]) -> tuple[Any, float]:
    """The compiled case and the seconds it took (trace, lower, compile)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).trace(*avals).lower().compile(harness.COMPILER_OPTIONS or None)
    return compiled, time.perf_counter() - start


def estimate(compiled: Any, target: str) -> harness.Record:
    """`TARGET_RECORD`'s numbers (but `target`) and XLA's memory bytes for one compiled case."""
    counts = hlo_traffic.count(compiled.as_text())
    peaks = hlo_traffic.TARGETS[target]
    est_s = hlo_traffic.roofline(counts, peaks)
    memory_s = counts.bytes / peaks.bandwidth
    return {
        **harness.memory(compiled),
        "traffic_bytes": counts.bytes,
        "flops": counts.total_flops,
        "est_s": est_s,
        "bound": "memory" if memory_s >= est_s else "compute",
    }


def _record(target: str, name: str, compiled: Any, compile_s: float) -> harness.Record:
    return {
        "case": name,
        "compile_s": compile_s,
        **estimate(compiled, target),
        **dict.fromkeys(("min_s", "median_s", "p10_s", "p90_s", "value")),
        "repeats": 0,
    }


def run_family(
    family: harness.Family,
    shapes: Iterable[Shape | LinearShape],
    dtypes: Iterable[str],
    target: str,
    *,
    losses: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[harness.Record]:
    """Compiles every case of `family` for `target` at every shape and dtype; one record each.

    The same cases, inputs and dtype rules as `harness.run_family`, but
    traced on shapes only: nothing is allocated on, or run by, the target.
    """
    cases = harness.build_cases(family, losses)
    where = device(target)
    records = []
    for shape in shapes:
        for dtype in dtypes:
            if progress is not None:
                progress(f"{target}: {family.name} {shape.name} {dtype}: {len(cases)} cases")
            avals = abstract(family.make_inputs(shape, DTYPES[dtype]), where)
            with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
                for name, fn in cases.items():
                    compiled, compile_s = compile_case(fn, avals)
                    loss, impl, mode = name.split("/")
                    records.append(
                        {
                            "family": family.name,
                            "shape": shape.name,
                            **shape.dims,
                            "dtype": dtype,
                            "loss": loss,
                            "impl": impl,
                            "mode": mode,
                            "target": target,
                            **_record(target, name, compiled, compile_s),
                        }
                    )
    return records


def environment(target: str) -> harness.Record:
    """`harness.environment` of the host, with the target's device and platform."""
    where = device(target)
    host = harness.environment(jax.devices("cpu")[0])
    platform = "gpu" if TOPOLOGIES[target].platform == "cuda" else "tpu"
    return {**host, "device": where.device_kind, "platform": platform, "device_count": 1}


def explain(family: str, case: str, size: str, dtype: str, target: str, top: int = 15) -> str:
    """One case's counts and its `top` heaviest kernels, compiled for `target`, as text."""
    fam = families()[family]
    (shape,) = [s for s in fam.registry.values() if s.name == size]
    avals = abstract(fam.make_inputs(shape, DTYPES[dtype]), device(target))
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        compiled, _ = compile_case(harness.build_cases(fam)[case], avals)
    hlo = compiled.as_text()
    record = estimate(compiled, target)
    lines = [
        f"{family} {case} {size} {dtype} on {target}: est {1e3 * record['est_s']:.3f} ms"
        f" ({record['bound']}), traffic {record['traffic_bytes'] / 1e9:.3f} GB,"
        f" {record['flops'] / 1e12:.3f} TFLOP, temp {record['temp_bytes'] / 2**20:.1f} MiB",
        f"{'kernel':<60} {'runs':>6} {'GB':>10} {'TFLOP':>8}",
    ]
    for name, runs, nbytes, flops in hlo_traffic.top_kernels(hlo, top):
        lines.append(f"{name:<60} {runs:>6} {nbytes / 1e9:>10.3f} {flops / 1e12:>8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description="Where one case's traffic goes, on a target.")
    cli.add_argument("--target", required=True, choices=list(TOPOLOGIES))
    cli.add_argument(
        "--case",
        default="fused/mean/jwxent/value_and_grad",
        help="family/loss/impl/mode (default: fused/mean/jwxent/value_and_grad)",
    )
    cli.add_argument("--size", default="8192x1024x32000", help="a shape name of the family")
    cli.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    cli.add_argument("--top", type=int, default=15, help="kernels to list")
    args = cli.parse_args(argv)
    # The compile-only device needs the accelerator's plugin, but JAX itself on the CPU.
    jax.config.update("jax_platforms", "cpu")
    family, case = args.case.split("/", 1)
    print(explain(family, case, args.size, args.dtype, args.target, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
