"""Renders softmax benchmark JSON lines as a Markdown table and a plot.

    python -m benchmarks.render benchmarks/results/cpu-amd-epyc.jsonl \\
        --doc docs/benchmarks.md --plot docs/img/benchmarks.png

For each shape, dtype and loss: the median time of jwxent's `value_and_grad`,
its ratio to optax with the same weighting and to the floor (one reducing
pass plus one logits-shaped writing pass), for the integer-label loss also the
forward-only ratio and the naive one-hot loss's ratio, and the temp bytes of
jwxent and optax. `--doc` replaces the table between the
`<!-- results:start -->` and `<!-- results:end -->` lines of a Markdown file;
without it the table is printed.
"""

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks.harness import read_jsonl

LOSSES = ("int", "smooth", "zloss", "soft")
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _index(records: list[dict]) -> dict[tuple, dict[str, dict]]:
    table: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in records:
        if r.get("benchmark", "softmax") == "softmax":
            table[(r["shape"], r["dtype"])][f"{r['loss']}/{r['impl']}/{r['mode']}"] = r
    return table


def _ratio(cases: dict[str, dict], ours: str, theirs: str) -> str:
    if ours not in cases or theirs not in cases:
        return "–"
    return f"{cases[ours]['median_s'] / cases[theirs]['median_s']:.2f}"


def render(records: list[dict]) -> str:
    """A Markdown table, one row per (shape, dtype, loss) with jwxent and optax."""
    lines = [
        "| shape | dtype | loss | jwxent vg ms | × optax | × floor | fwd × optax"
        " | naive × optax | jwxent temp MiB | optax temp MiB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (shape, dtype), cases in _index(records).items():
        floor = cases.get("floor/reduce/fwd"), cases.get("floor/write/fwd")
        floor_s = sum(c["median_s"] for c in floor) if all(floor) else None
        for loss in LOSSES:
            ours, theirs = cases.get(f"{loss}/jwxent/vg"), cases.get(f"{loss}/optax/vg")
            if ours is None or theirs is None:
                continue
            vs_floor = f"{ours['median_s'] / floor_s:.2f}" if floor_s and loss == "int" else "–"
            lines.append(
                f"| {shape} | {dtype} | {loss} | {1e3 * ours['median_s']:.0f}"
                f" | {ours['median_s'] / theirs['median_s']:.2f} | {vs_floor}"
                f" | {_ratio(cases, f'{loss}/jwxent/fwd', f'{loss}/optax/fwd')}"
                f" | {_ratio(cases, f'{loss}/naive/vg', f'{loss}/optax/vg')}"
                f" | {ours['temp_bytes'] / 2**20:.2f} | {theirs['temp_bytes'] / 2**20:.1f} |"
            )
    return "\n".join(lines)


def write_into(doc: Path, table: str) -> None:
    """Replaces the lines between `START` and `END` in `doc` by `table`."""
    text = doc.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{doc} has no {START} ... {END} block to replace.")
    doc.write_text(pattern.sub(lambda _: f"{START}\n{table}\n{END}", text))


def plot(records: list[dict], path: str) -> None:
    """Bars of jwxent's time ratio to optax per loss, and temp bytes of both (int)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(_index(records).items())
    labels = [f"{shape}\n{dtype}" for (shape, dtype), _ in groups]
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(LOSSES)
    for i, loss in enumerate(LOSSES):
        ratios = [
            c[f"{loss}/jwxent/vg"]["median_s"] / c[f"{loss}/optax/vg"]["median_s"]
            if f"{loss}/jwxent/vg" in c and f"{loss}/optax/vg" in c
            else 0.0
            for _, c in groups
        ]
        time_ax.bar([g + (i - 1.5) * width for g in range(len(groups))], ratios, width, label=loss)
    time_ax.axhline(1.0, color="black", linewidth=0.8)
    time_ax.set(title="value_and_grad time, jwxent / optax (lower is better)")
    time_ax.legend(fontsize=8)
    for ax in (time_ax, memory_ax):
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(labels, fontsize=7)
    for offset, impl in ((-0.2, "jwxent"), (0.2, "optax")):
        temp = [max(c.get(f"int/{impl}/vg", {}).get("temp_bytes", 0), 1) for _, c in groups]
        memory_ax.bar([g + offset for g in range(len(groups))], temp, 0.4, label=impl)
    memory_ax.set(title="temp bytes of value_and_grad, integer labels (log)", yscale="log")
    memory_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="JSON-lines files")
    parser.add_argument("--doc", type=Path, help="Markdown file whose results block to replace")
    parser.add_argument("--plot", type=Path, help="PNG file to write")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    records = [r for path in args.results for r in read_jsonl(path)]
    table = render(records)
    if args.doc:
        write_into(args.doc, table)
    else:
        print(table)
    if args.plot:
        plot(records, str(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
