"""Renders benchmark JSON lines as Markdown tables, one per family, and a plot.

    python -m benchmarks.render benchmarks/results/cpu-amd-epyc.jsonl \\
        benchmarks/results/gpu-nvidia-h200.jsonl \\
        --doc docs/benchmarks.md --plot docs/img/benchmarks.png

One section per machine (platform, device and CPU model, in the heading), and
in it one table per family (`benchmarks/bench_*.py`): for each shape, dtype and
loss, jwxent's median `value_and_grad` time; its ratio to the family's
reference (optax with the same weighting by hand, a plain-JAX formula, the
unfused projection), forward only, to the other baselines (a naive loss), to
the measured floor and to the HBM floor; the temp memory of jwxent and the
reference (per example too); and the performance bars that apply to the row
(`benchmarks/bars.py`): `meets`, or `misses:` and the bars missed. A column
with nothing in it is left out. The ratios are computed here, not stored.

Records of `benchmarks.run --target` (compiled for an accelerator, not run)
get a section per target, and tables of the roofline estimate instead of
times: jwxent's estimated `value_and_grad` time and its ratio to the
reference's, the traffic and temp memory of both, and the accelerator bars
(`bars.target_bars`).

`--doc` replaces the lines between `<!-- results:start -->` and
`<!-- results:end -->` of a Markdown file; without it the tables are printed.
When files hold the same case of the same machine twice, the later one counts.
"""

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from benchmarks import bars, families
from benchmarks.bars import Row
from benchmarks.harness import VALUE_AND_GRAD, Family, Record, read_jsonl

START, END = "<!-- results:start -->", "<!-- results:end -->"
FLOOR = "floor"


def upgrade(record: Record) -> Record:
    """A record of the softmax-only format (`benchmark`, mode `vg`) in today's format."""
    if "family" in record:
        return record
    mode = VALUE_AND_GRAD if record["mode"] == "vg" else record["mode"]
    case = f"{record['loss']}/{record['impl']}/{mode}"
    return {**record, "family": record.get("benchmark", "softmax"), "mode": mode, "case": case}


def load(paths: Iterable[str | Path]) -> list[Record]:
    """The records of every file, in order, in today's format."""
    return [upgrade(record) for path in paths for record in read_jsonl(path)]


Machine = tuple[str, str, str, str]


def machine(record: Record) -> Machine:
    """Platform, device, host CPU and `--target` ("" for a run on the device itself)."""
    return record["platform"], record["device"], record["cpu"], record.get("target") or ""


def sections(records: Iterable[Record]) -> dict[Machine, list[Record]]:
    """Records by machine, each case once (the last one), in order of appearance."""
    latest: dict[tuple, Record] = {}
    for r in records:
        latest[(machine(r), r["family"], r["shape"], r["dtype"], r["case"])] = r
    by_machine: dict[Machine, list[Record]] = defaultdict(list)
    for r in latest.values():
        by_machine[machine(r)].append(r)
    return dict(by_machine)


def _median(record: Record | None) -> float | None:
    return None if record is None else record.get("median_s")


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _ratio(ours: Record | None, theirs: Record | None) -> float | None:
    return _div(_median(ours), _median(theirs))


def _floor_s(cases: dict[str, Record]) -> float | None:
    """The measured floor of `value_and_grad`: the reducing plus the writing pass."""
    reduce, write = (_median(cases.get(f"{FLOOR}/{impl}/fwd")) for impl in ("reduce", "write"))
    return reduce + write if reduce is not None and write is not None else None


def _row(loss: str, cases: dict[str, Record], reference: str) -> Row | None:
    ours = cases.get(f"{loss}/jwxent/{VALUE_AND_GRAD}")
    if ours is None:
        return None
    ref = cases.get(f"{loss}/{reference}/{VALUE_AND_GRAD}")
    others = [r for r in cases.values() if r["loss"] == loss and r["mode"] == VALUE_AND_GRAD]
    time_s = ours["median_s"]
    return Row(
        shape=ours["shape"],
        dtype=ours["dtype"],
        loss=loss,
        batch=ours["batch"],
        reference=reference,
        time_s=time_s,
        ratio=_ratio(ours, ref),
        fwd_ratio=_ratio(cases.get(f"{loss}/jwxent/fwd"), cases.get(f"{loss}/{reference}/fwd")),
        other_ratios={
            r["impl"]: _ratio(ours, r) for r in others if r["impl"] not in ("jwxent", reference)
        },
        floor_ratio=_div(time_s, _floor_s(cases)),
        hbm_ratio=_ratio(ours, cases.get(f"{FLOOR}/hbm/{VALUE_AND_GRAD}")),
        temp_bytes=ours["temp_bytes"],
        reference_temp_bytes=None if ref is None else ref["temp_bytes"],
    )


def _est(record: Record | None) -> float | None:
    return None if record is None else record.get("est_s")


def _traffic(record: Record | None) -> float | None:
    return None if record is None else record.get("traffic_bytes")


def _target_row(loss: str, cases: dict[str, Record], reference: str) -> Row | None:
    """A row of estimates (`--target` records): the ratios are of `est_s`, not of times."""
    ours = cases.get(f"{loss}/jwxent/{VALUE_AND_GRAD}")
    if ours is None:
        return None
    ref = cases.get(f"{loss}/{reference}/{VALUE_AND_GRAD}")
    floors = [_est(cases.get(f"{FLOOR}/{impl}/fwd")) for impl in ("reduce", "write")]
    return Row(
        shape=ours["shape"],
        dtype=ours["dtype"],
        loss=loss,
        batch=ours["batch"],
        reference=reference,
        time_s=_est(ours),
        ratio=_div(_est(ours), _est(ref)),
        fwd_ratio=_div(
            _est(cases.get(f"{loss}/jwxent/fwd")), _est(cases.get(f"{loss}/{reference}/fwd"))
        ),
        floor_ratio=_div(_est(ours), None if None in floors else sum(floors)),
        temp_bytes=ours["temp_bytes"],
        reference_temp_bytes=None if ref is None else ref["temp_bytes"],
        traffic_bytes=_traffic(ours),
        reference_traffic_bytes=_traffic(ref),
        bound=ours.get("bound"),
    )


def rows(records: Iterable[Record], reference: str) -> list[Row]:
    """One `Row` per shape, dtype and loss of one family on one machine."""
    groups: dict[tuple[str, str], dict[str, Record]] = defaultdict(dict)
    for r in records:
        groups[(r["shape"], r["dtype"])][r["case"]] = r
    out = []
    for cases in groups.values():
        estimated = any(r.get("target") for r in cases.values())
        make_row = _target_row if estimated else _row
        for loss in dict.fromkeys(r["loss"] for r in cases.values() if r["loss"] != FLOOR):
            row = make_row(loss, cases, reference)
            if row is not None:
                out.append(row)
    return out


def _x(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}"


def _number(x: float) -> str:
    """Three significant digits, without an exponent: `0.0123`, `1.5`, `123`, `1,234`."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else _number(1e3 * seconds)


def _bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{_number(n / size)} {unit}"
    return f"{n:.0f} B"


def _gb(n: float | None) -> str:
    return "–" if n is None else f"{_number(n / 1e9)} GB"


def _per_row(row: Row) -> str:
    return "–" if row.temp_bytes is None else _number(row.temp_bytes / row.batch)


Column = tuple[str, str, Callable[[Row], str]]


def columns(family: Family, table_rows: list[Row]) -> list[Column]:
    """(header, alignment, cell) of every column that has a value in some row."""
    ref = family.reference
    others = dict.fromkeys(impl for row in table_rows for impl in row.other_ratios)

    def bars_of(row: Row) -> str:
        variant = family.variant(row.loss)
        return bars.verdict(row, variant.bars if variant else ())

    every: list[Column] = [
        ("shape", "---", lambda r: r.shape),
        ("dtype", "---", lambda r: r.dtype),
        ("loss", "---", lambda r: r.loss),
        ("jwxent ms", "---:", lambda r: _ms(r.time_s)),
        (f"× {ref}", "---:", lambda r: _x(r.ratio)),
        (f"fwd × {ref}", "---:", lambda r: _x(r.fwd_ratio)),
        *((f"× {impl}", "---:", lambda r, i=impl: _x(r.other_ratios.get(i))) for impl in others),
        ("× floor", "---:", lambda r: _x(r.floor_ratio)),
        ("× HBM floor", "---:", lambda r: _x(r.hbm_ratio)),
        ("jwxent temp", "---:", lambda r: _bytes(r.temp_bytes)),
        (f"{ref} temp", "---:", lambda r: _bytes(r.reference_temp_bytes)),
        ("temp B/row", "---:", _per_row),
        ("bars", "---", bars_of),
    ]
    return [c for c in every if any(c[2](row) != "–" for row in table_rows)]


def target_columns(family: Family, table_rows: list[Row]) -> list[Column]:
    """The columns of an estimate table (`--target` records) that have a value in some row."""
    ref = family.reference

    def bars_of(row: Row) -> str:
        variant = family.variant(row.loss)
        return bars.verdict(row, bars.target_bars(variant.bars) if variant else bars.TARGET)

    every: list[Column] = [
        ("shape", "---", lambda r: r.shape),
        ("dtype", "---", lambda r: r.dtype),
        ("loss", "---", lambda r: r.loss),
        ("jwxent est. ms", "---:", lambda r: _ms(r.time_s)),
        (f"est. × {ref}", "---:", lambda r: _x(r.ratio)),
        (f"fwd × {ref}", "---:", lambda r: _x(r.fwd_ratio)),
        ("× floor", "---:", lambda r: _x(r.floor_ratio)),
        ("bound", "---", lambda r: r.bound or "–"),
        ("jwxent traffic", "---:", lambda r: _gb(r.traffic_bytes)),
        (f"{ref} traffic", "---:", lambda r: _gb(r.reference_traffic_bytes)),
        ("traffic ×", "---:", lambda r: _x(_div(r.traffic_bytes, r.reference_traffic_bytes))),
        ("jwxent temp", "---:", lambda r: _bytes(r.temp_bytes)),
        (f"{ref} temp", "---:", lambda r: _bytes(r.reference_temp_bytes)),
        ("temp B/row", "---:", _per_row),
        ("bars", "---", bars_of),
    ]
    return [c for c in every if any(c[2](row) != "–" for row in table_rows)]


def table(family: Family, table_rows: list[Row]) -> str:
    """A Markdown table of `rows` with the columns that have values."""
    estimated = any(row.traffic_bytes is not None for row in table_rows)
    cols = (target_columns if estimated else columns)(family, table_rows)
    lines = [
        "| " + " | ".join(c[0] for c in cols) + " |",
        "| " + " | ".join(c[1] for c in cols) + " |",
    ]
    lines += ["| " + " | ".join(c[2](row) for c in cols) + " |" for row in table_rows]
    return "\n".join(lines)


def _unique(records: list[Record], field: str) -> str:
    return ", ".join(dict.fromkeys(str(r.get(field)) for r in records))


def target_heading(records: list[Record]) -> str:
    """`### Estimate for <target>: <device>, compiled on <cpu>`, then versions and peaks."""
    from benchmarks.hlo_traffic import TARGETS  # plain Python: no accelerator plugin needed

    last = records[-1]
    peaks = TARGETS[last["target"]]
    dates = sorted(str(r["date"])[:10] for r in records)
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    shas = ", ".join(dict.fromkeys(str(r["git_sha"])[:7] for r in records))
    return (
        f"### Estimate for `{last['target']}`: {last['device']} (compiled on {last['cpu']},"
        " not run)\n\n"
        f"jax {_unique(records, 'jax')}, git {shas}, {when}."
        f" Peaks: {peaks.peak_16 / 1e12:,.0f} TFLOP/s 16-bit,"
        f" {peaks.peak_32 / 1e12:,.0f} TFLOP/s f32, {peaks.bandwidth / 1e12:.3g} TB/s."
        " Estimated time = max(flops / peak, traffic / bandwidth) of `value_and_grad`;"
        " ratios are jwxent's estimate over the column's."
    )


def heading(records: list[Record]) -> str:
    """`### CPU: <model> (<n> cores)` or `### GPU: <device> (host: <cpu>)`, then versions."""
    last = records[-1]
    if last.get("target"):
        return target_heading(records)
    cores = f"{last['cpu']}, {last['cpu_count']} cores"
    if last["platform"] == "cpu":
        title = f"CPU: {cores}"
    else:
        title = f"{last['platform'].upper()}: {last['device']} (host: {cores})"
    dates = sorted(str(r["date"])[:10] for r in records)
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    shas = ", ".join(dict.fromkeys(str(r["git_sha"])[:7] for r in records))
    text = (
        f"jax {_unique(records, 'jax')}, jaxlib {_unique(records, 'jaxlib')}, git {shas}, {when}."
        " Times are medians of `value_and_grad`; ratios are jwxent's time over the column's."
    )
    bandwidth = next(
        (r["bandwidth_bytes_per_s"] for r in records if "bandwidth_bytes_per_s" in r), None
    )
    if bandwidth:
        text += f" Measured copy bandwidth (for the HBM floor): {bandwidth / 1e9:,.0f} GB/s."
    return f"### {title}\n\n{text}"


def _family(name: str) -> Family:
    """The family's definition, or a bare one for records of a family that no longer exists."""
    return families().get(name) or Family(name=name, title=name, make_inputs=tuple, variants=())


def family_tables(records: list[Record]) -> dict[str, tuple[Family, list[Row]]]:
    """The rows of every family in `records` (one machine), in table order."""
    by_family: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_family[r["family"]].append(r)
    order = list(families())
    names = sorted(by_family, key=lambda n: (order.index(n) if n in order else len(order), n))
    out = {}
    for name in names:
        family = _family(name)
        out[name] = family, rows(by_family[name], family.reference)
    return out


def render(records: Iterable[Record]) -> str:
    """Markdown: a section per machine, a table per family in it."""
    parts = []
    for machine_records in sections(records).values():
        parts.append(heading(machine_records))
        for family, table_rows in family_tables(machine_records).values():
            if table_rows:
                parts.append(f"#### {family.title}\n\n{table(family, table_rows)}")
    return "\n\n".join(parts)


def write_into(doc: Path, text: str) -> None:
    """Replaces the lines between `START` and `END` in `doc` by `text`."""
    content = doc.read_text()
    start, end = content.find(START), content.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{doc} has no {START} ... {END} block to replace.")
    doc.write_text(f"{content[:start]}{START}\n{text}\n{content[end:]}")


def plot(records: Iterable[Record], path: str | Path) -> None:
    """Per family: jwxent's `value_and_grad` time and temp memory over the reference's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    machines = sections(records)
    per_family: dict[str, list[tuple[str, Row]]] = defaultdict(list)
    for (platform, *_), machine_records in machines.items():
        prefix = f"{platform}\n" if len(machines) > 1 else ""
        for name, (_, table_rows) in family_tables(machine_records).items():
            per_family[name] += [(f"{prefix}{r.shape}\n{r.dtype}", r) for r in table_rows]
    fig, axes = plt.subplots(len(per_family), 2, figsize=(13, 3.4 * len(per_family)), squeeze=False)
    for (name, labelled), (time_ax, temp_ax) in zip(per_family.items(), axes, strict=True):
        _bars(time_ax, labelled, lambda r: r.ratio)
        _bars(temp_ax, labelled, _temp_ratio)
        reference = _family(name).reference
        time_ax.set_title(f"{name}: time, jwxent / {reference} (lower is better)", fontsize=9)
        temp_ax.set_title(f"{name}: temp memory, jwxent / {reference} (log)", fontsize=9)
        temp_ax.set_yscale("log")
        time_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _temp_ratio(row: Row) -> float | None:
    if row.temp_bytes is None or not row.reference_temp_bytes:
        return None
    return max(row.temp_bytes, 1) / row.reference_temp_bytes


def _bars(ax, labelled: list[tuple[str, Row]], value: Callable[[Row], float | None]) -> None:
    """Grouped bars: one group per shape and dtype, one bar per loss, a line at 1."""
    groups = list(dict.fromkeys(group for group, _ in labelled))
    losses = list(dict.fromkeys(row.loss for _, row in labelled))
    width = 0.8 / len(losses)
    for i, loss in enumerate(losses):
        by_group = {group: value(row) for group, row in labelled if row.loss == loss}
        heights = [by_group.get(group) or 0.0 for group in groups]
        offset = (i - (len(losses) - 1) / 2) * width
        ax.bar([g + offset for g in range(len(groups))], heights, width, label=loss)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=7)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="JSON-lines files, one per machine")
    parser.add_argument("--doc", type=Path, help="Markdown file whose results block to replace")
    parser.add_argument("--plot", type=Path, help="PNG file to write")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    records = load(args.results)
    text = render(records)
    if args.doc:
        write_into(args.doc, text)
    else:
        print(text)
    if args.plot:
        plot(records, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
