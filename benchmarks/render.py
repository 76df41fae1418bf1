"""Renders benchmark JSON lines as the Markdown table of `docs/benchmarks.md`.

    python -m benchmarks.render benchmarks/results/cpu-amd-epyc.jsonl

For each shape, dtype and loss: the median time of jwxent's `value_and_grad`
and its ratio to optax with the same weighting and to the floor (one reducing
pass plus one logits-shaped writing pass), and the temp bytes of both.
"""

import sys
from collections import defaultdict

from benchmarks.harness import read_jsonl


def _index(records: list[dict]) -> dict[tuple, dict[str, dict]]:
    table: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in records:
        table[(r["shape"], r["dtype"])][f"{r['loss']}/{r['impl']}/{r['mode']}"] = r
    return table


def render(records: list[dict]) -> str:
    """A Markdown table, one row per (shape, dtype, loss) with jwxent and optax."""
    lines = [
        "| shape | dtype | loss | jwxent vg ms | × optax | × floor | jwxent temp MiB"
        " | optax temp MiB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (shape, dtype), cases in _index(records).items():
        floor = cases.get("floor/reduce/fwd"), cases.get("floor/write/fwd")
        floor_s = sum(c["median_s"] for c in floor) if all(floor) else None
        for loss in ("int", "smooth", "zloss", "soft"):
            ours, theirs = cases.get(f"{loss}/jwxent/vg"), cases.get(f"{loss}/optax/vg")
            if ours is None or theirs is None:
                continue
            vs_floor = f"{ours['median_s'] / floor_s:.2f}" if floor_s else "–"
            lines.append(
                f"| {shape} | {dtype} | {loss} | {1e3 * ours['median_s']:.0f}"
                f" | {ours['median_s'] / theirs['median_s']:.2f} | {vs_floor}"
                f" | {ours['temp_bytes'] / 2**20:.2f} | {theirs['temp_bytes'] / 2**20:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    records = [r for path in paths for r in read_jsonl(path)]
    print(render(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
