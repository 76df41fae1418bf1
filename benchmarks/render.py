"""Renders benchmark JSON lines as the Markdown table of `docs/benchmarks.md`.

    python -m benchmarks.render benchmarks/results/cpu.jsonl --plot docs/img/benchmarks.png

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


def plot(records: list[dict], path: str) -> None:
    """Bar charts of jwxent's time ratio to optax and of both temp memories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for (shape, dtype), cases in _index(records).items():
        ours, theirs = cases.get("int/jwxent/vg"), cases.get("int/optax/vg")
        if ours and theirs:
            rows.append((f"{shape}\n{dtype}", ours, theirs))
    labels = [r[0] for r in rows]
    positions = range(len(rows))
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 4))
    time_ax.bar(positions, [o["median_s"] / t["median_s"] for _, o, t in rows])
    time_ax.axhline(1.0, color="black", linewidth=0.8)
    time_ax.set(title="value_and_grad time, jwxent / optax", xticks=list(positions))
    time_ax.set_xticklabels(labels, fontsize=7)
    width = 0.4
    memory_ax.bar([p - width / 2 for p in positions], [o["temp_bytes"] for _, o, _ in rows], width)
    memory_ax.bar([p + width / 2 for p in positions], [t["temp_bytes"] for _, _, t in rows], width)
    memory_ax.set(title="temp bytes (log)", yscale="log", xticks=list(positions))
    memory_ax.set_xticklabels(labels, fontsize=7)
    memory_ax.legend(["jwxent", "optax"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    plot_path = None
    if "--plot" in args:
        at = args.index("--plot")
        plot_path = args[at + 1]
        del args[at : at + 2]
    records = [r for path in args for r in read_jsonl(path)]
    print(render(records))
    if plot_path:
        plot(records, plot_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
