"""The benchmarks run end to end at the tiny smoke size, and render (no time thresholds).

One test per family runs `python -m benchmarks.run --sizes tiny` in bf16 with
one round and no warm-up, and compiles with XLA's cheapest CPU options (the
times are not looked at; the memory analysis barely moves): every
family must write complete records whose cases agree on the loss value, and
render a table. The renderer's sections, bars, document block and plot are
checked on made-up records of two machines.
"""

import dataclasses
import math

import jax
import pytest

import benchmarks
from benchmarks import aot, bars, floor, harness, render, run, shapes

FAMILIES = benchmarks.families()


FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


def _compiles_with(option: str, value) -> bool:
    try:
        jax.jit(jax.numpy.sin).lower(1.0).compile({option: value})
    except Exception:  # an option this XLA does not know
        return False
    return True


@pytest.fixture
def fast_compile(monkeypatch):
    """Compiles the cases ~4× faster: smoke-test times mean nothing anyway.

    Temp bytes move by a few hundred bytes at most at the tiny size.
    """
    options = {k: v for k, v in FAST_COMPILE.items() if _compiles_with(k, v)}
    monkeypatch.setattr(harness, "COMPILER_OPTIONS", options)


def test_every_bench_module_is_a_family():
    assert list(FAMILIES) == list(benchmarks.ORDER)
    for family in FAMILIES.values():
        assert shapes.select(["tiny"], family.registry), family.name
        for variant in family.variants:
            assert family.reference in variant.baselines, (family.name, variant.name)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_tiny_run_writes_complete_records(name, tmp_path, fast_compile, monkeypatch, capsys):
    # As on an accelerator (the HBM floor), with a made-up copy bandwidth.
    monkeypatch.setattr(run, "on_accelerator", lambda device: True)
    monkeypatch.setattr(floor, "copy_bandwidth", lambda device: 1e9)
    out = tmp_path / "tiny.jsonl"
    argv = ["--families", name, "--sizes", "tiny", "--dtypes", "bf16", "--device", "cpu"]
    assert run.main([*argv, "--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    records = harness.read_jsonl(out)
    family = FAMILIES[name]
    floored = floor.CASES.keys() <= harness.build_cases(family).keys()
    hbm = {"floor/hbm/fwd", "floor/hbm/value_and_grad"} if floored else set()
    assert {r["case"] for r in records} == set(harness.build_cases(family)) | hbm
    assert len(records) == len(harness.build_cases(family)) + len(hbm)
    for r in records:
        assert set(harness.RECORD) <= set(r), set(harness.RECORD) - set(r)
        assert (r["family"], r["shape"], r["dtype"], r["repeats"]) == (name, "tiny", "bf16", 1)
        assert r["case"] == f"{r['loss']}/{r['impl']}/{r['mode']}"
        assert math.isfinite(r["median_s"]) and r["median_s"] > 0
        assert r["min_s"] <= r["p10_s"] <= r["median_s"] <= r["p90_s"]
        assert r["platform"] == "cpu"
        if r["impl"] != "hbm":  # computed from the bandwidth, not compiled
            assert r["temp_bytes"] >= 0 and r["argument_bytes"] > 0
    for variant in family.variants:
        values = [r["value"] for r in records if r["loss"] == variant.name]
        assert len(values) == len(variant.modes) * (1 + len(variant.baselines))
        # Everyone computes the same loss (bf16 logits; baselines compute in bf16).
        assert max(values) - min(values) <= 2e-2 * abs(values[0]), (variant.name, values)
    text = render.render(records)
    assert f"#### {family.title}" in text
    table = text.split(f"#### {family.title}\n\n")[1]
    assert len(table.splitlines()) == 2 + len(family.variants)
    assert ("× HBM floor" in table) == floored
    assert text in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["--families", "nope"], ["--families", "softmax/nope"], ["--sizes", "huge"]],
    ids=["family", "loss", "size"],
)
def test_bad_selection_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as error:
        run.main([*argv, "--out", "/dev/null"])
    assert error.value.code == 2
    assert argv[-1] in capsys.readouterr().err


def test_selection_by_family_and_loss():
    selection = run.parse_selection(
        ["softmax/int", "softmax/zloss", "fused", "fused/mean"], FAMILIES
    )
    assert selection == {"softmax": {"int", "zloss"}, "fused": None}


def _record(family, shape, dtype, case, median_s, temp_bytes, platform="cpu", **extra):
    loss, impl, mode = case.split("/")
    env = {"platform": platform, "device": "cpu" if platform == "cpu" else "NVIDIA H200"}
    env |= {"cpu": "AMD EPYC", "cpu_count": 2, "jax": "0.10.2", "jaxlib": "0.10.2"}
    env |= {"git_sha": "0123456789", "date": "2026-12-01T00:00:00+00:00"}
    return {
        **env,
        "family": family,
        "shape": shape.name,
        **shape.dims,
        "dtype": dtype,
        "case": case,
        "loss": loss,
        "impl": impl,
        "mode": mode,
        "median_s": median_s,
        "temp_bytes": temp_bytes,
        **extra,
    }


def _made_up_records(platform):
    """Every case of every family at its tiny shape, f32 and bf16: jwxent at 0.8× the others."""
    records = []
    for family in FAMILIES.values():
        shape = family.registry["tiny"]
        for dtype in ("f32", "bf16"):
            for case in harness.build_cases(family):
                ours = "/jwxent/" in case
                args = (family.name, shape, dtype, case, 0.8 if ours else 1.0, 0 if ours else 10**6)
                records.append(_record(*args, platform=platform))
    return records


def test_render_sections_tables_bars_and_document(tmp_path):
    cpu, gpu = _made_up_records("cpu"), _made_up_records("gpu")
    gpu += floor.hbm_records(gpu, bandwidth=1e9)
    text = render.render(cpu + gpu)
    cpu_text, gpu_text = text.split("### GPU: NVIDIA H200 (host: AMD EPYC, 2 cores)")
    assert cpu_text.startswith("### CPU: AMD EPYC, 2 cores")
    for section in (cpu_text, gpu_text):
        for family in FAMILIES.values():
            assert section.count(f"#### {family.title}\n") == 1
    assert "× HBM floor" in gpu_text and "× HBM floor" not in cpu_text
    # 0.8× the reference meets the f32 bar and misses bf16's 0.5×; no temp anywhere meets the rest.
    int_rows = [line for line in cpu_text.splitlines() if line.startswith("| tiny | f32 | int |")]
    assert int_rows[0].endswith("| meets |")
    bf16 = [line for line in cpu_text.splitlines() if line.startswith("| tiny | bf16 | int |")]
    assert bf16[0].endswith("| misses: time ≤ 0.5× optax |")
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Results\n\n{render.START}\nold\n{render.END}\n\nAfter.\n")
    render.write_into(doc, text)
    assert doc.read_text() == f"# Results\n\n{render.START}\n{text}\n{render.END}\n\nAfter.\n"
    few = [r for r in cpu + gpu if r["family"] in ("sigmoid", "fused")]  # a faster plot
    render.plot(few, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_bars_on_one_row():
    row = bars.Row("s", "bf16", "int", batch=100, reference="optax", ratio=0.4, temp_bytes=6400)
    assert bars.verdict(row, bars.LABELS) == "meets"
    row = dataclasses.replace(row, ratio=0.6, temp_bytes=6401, floor_ratio=1.2)
    assert bars.verdict(row, bars.INTEGER_LABELS) == ("misses: time ≤ 0.5× optax, temp ≤ 64 B/row")
    fused = bars.Row(
        "s", "f32", "mean", 1, "unfused", ratio=1.2, temp_bytes=1, reference_temp_bytes=8
    )
    assert bars.verdict(fused, bars.FUSED) == "misses: time ≤ 1.15× unfused"
    assert bars.verdict(row, ()) == "–"


def test_hbm_floor_from_copy_bandwidth():
    bandwidth = floor.copy_bandwidth(jax.devices("cpu")[0], nbytes=1 << 20, repeats=1)
    assert bandwidth > 0
    shape = shapes.SHAPES["tiny"]
    reduce = _record("softmax", shape, "bf16", "floor/reduce/fwd", 1.0, 0)
    fwd, vg = floor.hbm_records([reduce], bandwidth=1e9)
    logits_bytes = shape.batch * shape.classes * 2
    assert fwd["case"] == "floor/hbm/fwd" and fwd["median_s"] == logits_bytes / 1e9
    assert vg["case"] == "floor/hbm/value_and_grad" and vg["median_s"] == 3 * logits_bytes / 1e9


def test_old_softmax_records_still_render():
    old = _record("x", shapes.SHAPES["tiny"], "f32", "int/jwxent/vg", 1.0, 0)
    old.pop("family")
    old |= {"benchmark": "softmax"}
    assert render.upgrade(old)["case"] == "int/jwxent/value_and_grad"
    assert "| tiny | f32 | int | 1,000 |" in render.render([render.upgrade(old)])


def _target_records(target="h100"):
    """Every case of softmax and fused at tiny, as if compiled for `target`: jwxent moves less."""
    records = []
    for name in ("softmax", "fused"):
        family = FAMILIES[name]
        for case in harness.build_cases(family):
            ours = "/jwxent/" in case
            temp = 0 if ours else 1000
            record = _record(name, family.registry["tiny"], "bf16", case, None, temp, "gpu")
            traffic = 8e5 if ours else 1e6
            record |= {"target": target, "traffic_bytes": traffic, "flops": 0.0}
            record |= {"est_s": traffic / 3.35e12, "bound": "memory"}
            records.append(record)
    return records


def test_render_target_estimates():
    text = render.render(_target_records())
    assert text.startswith("### Estimate for `h100`: NVIDIA H200 (compiled on AMD EPYC, not run)")
    assert "989 TFLOP/s 16-bit" in text and "3.35 TB/s" in text
    assert "| jwxent est. ms | est. × optax |" in text
    assert "| tiny | bf16 | int | 0.000239 | 0.80 |" in text
    assert "| memory | 0.0008 GB | 0.001 GB | 0.80 | 0 B | 1000 B |" in text
    # Less traffic and temp: every loss meets the accelerator bars, the fused loss its own.
    assert text.count("| meets |") == len(FAMILIES["softmax"].variants) + 1
    assert "misses" not in text


def test_target_bars():
    row = bars.Row("s", "bf16", "int", batch=10, reference="optax", temp_bytes=20480)
    row = dataclasses.replace(row, traffic_bytes=1.05, reference_traffic_bytes=1.0)
    assert bars.verdict(row, bars.TARGET) == "meets"
    row = dataclasses.replace(row, temp_bytes=20481, traffic_bytes=1.06)
    assert bars.verdict(row, bars.TARGET) == (
        "misses: temp ≤ 2 KiB/row or ref, traffic ≤ 1.05× optax"
    )
    assert bars.verdict(dataclasses.replace(row, reference_temp_bytes=20481), bars.TARGET) == (
        "misses: traffic ≤ 1.05× optax"
    )
    assert bars.target_bars(bars.FUSED) == bars.FUSED
    assert bars.target_bars(bars.LABELS) == bars.TARGET


def test_target_run_on_the_cpu_compiler(tmp_path, fast_compile, monkeypatch):
    # The deviceless path end to end, with the CPU standing in for the accelerator.
    monkeypatch.setattr(aot, "device", lambda target: jax.devices("cpu")[0])
    family = FAMILIES["fused"]
    records = aot.run_family(family, [family.registry["tiny"]], ["bf16"], "h100")
    assert {r["case"] for r in records} == set(harness.build_cases(family))
    for r in records:
        assert set(harness.RECORD) - {"device", "platform", "device_count", "cpu", "cpu_count"} - {
            "jax",
            "jaxlib",
            "git_sha",
            "date",
        } <= set(r)
        assert set(aot.TARGET_RECORD) <= set(r)
        assert r["target"] == "h100" and r["median_s"] is None and r["temp_bytes"] >= 0
        assert r["traffic_bytes"] > 0 and r["est_s"] > 0 and r["flops"] > 0


def test_unknown_target_or_missing_compiler_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as error:
        run.main(["--target", "a100", "--out", "/dev/null"])
    assert error.value.code == 2
    try:
        aot.device("tpu-v5e")
    except ValueError as missing:
        with pytest.raises(SystemExit) as error:
            run.main(["--target", "tpu-v5e", "--out", "/dev/null"])
        assert error.value.code == 2 and str(missing) in capsys.readouterr().err


def test_explain_lists_the_heaviest_kernels(fast_compile, monkeypatch, capsys):
    monkeypatch.setattr(aot, "device", lambda target: jax.devices("cpu")[0])
    monkeypatch.setattr(jax.config, "update", lambda *args: None)  # JAX is already on the CPU
    argv = ["--target", "h100", "--size", "tiny", "--top", "3"]
    assert aot.main([*argv, "--case", "fused/mean/unfused/value_and_grad"]) == 0
    head, columns, *kernels = capsys.readouterr().out.splitlines()
    assert head.startswith("fused mean/unfused/value_and_grad tiny bf16 on h100: est ")
    assert columns.split() == ["kernel", "runs", "GB", "TFLOP"]
    assert 1 <= len(kernels) <= 3
