"""The benchmark runs end to end at the tiny smoke size (no time thresholds)."""

import math

import jax

from benchmarks import render, run
from benchmarks.harness import read_jsonl


def test_tiny_benchmark_writes_complete_records(tmp_path):
    out = tmp_path / "tiny.jsonl"
    # The baselines are written as users write them, with implicit promotion.
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        assert run.main(["--sizes", "tiny", "--out", str(out), "--repeats", "2"]) == 0
    records = read_jsonl(out)
    cases = {record["case"] for record in records}
    assert {"int/jwxent/vg", "int/optax/vg", "floor/reduce/fwd", "floor/write/fwd"} <= cases
    for record in records:
        for field in ("device", "jax", "jaxlib", "git_sha", "date", "shape", "dtype"):
            assert field in record, field
        assert math.isfinite(record["median_s"]) and record["median_s"] > 0
        assert record["min_s"] <= record["median_s"] <= record["p90_s"]
        assert record["temp_bytes"] >= 0
    table = render.render(records)
    rows = [line for line in table.splitlines()[2:] if line.startswith("| tiny |")]
    assert len(rows) == 2 * len(render.LOSSES)  # f32 and bf16
    assert all(line.count("|") == table.splitlines()[0].count("|") for line in rows)
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Results\n\n{render.START}\nold\n{render.END}\n\nAfter.\n")
    render.write_into(doc, table)
    assert doc.read_text() == f"# Results\n\n{render.START}\n{table}\n{render.END}\n\nAfter.\n"
    render.plot(records, str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").stat().st_size > 0
