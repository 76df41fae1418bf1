"""The HLO traffic counter on hand-written HLO with known answers, and on one CPU compile.

No accelerator compiler is needed: the snippets are written in the syntax of
`compiled.as_text()` (GPU and TPU forms included), and the one compiled
program is compiled for the CPU.
"""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import hlo_traffic

ROW = 1024 * 4  # bytes of one f32[1,1024] row

# A scan over 8 rows of `xs`: each trip reads row i of `xs` (a dynamic slice in
# a fusion) and writes row i of `acc` in place (the fusion's root is a dynamic
# update slice), so one trip moves two rows, not two [8, 1024] buffers.
LOOP = """
HloModule scan, is_scheduled=true

%row_twice (p0: f32[8,1024], p1: s32[], p2: f32[8,1024]) -> f32[8,1024] {
  %p0 = f32[8,1024]{1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %p2 = f32[8,1024]{1,0} parameter(2)
  %zero = s32[] constant(0)
  %row = f32[1,1024]{1,0} dynamic-slice(%p2, %p1, %zero), dynamic_slice_sizes={1,1024}
  %twice = f32[1,1024]{1,0} add(%row, %row)
  ROOT %out = f32[8,1024]{1,0} dynamic-update-slice(%p0, %twice, %p1, %zero)
}

%body (state: (s32[], f32[8,1024], f32[8,1024])) -> (s32[], f32[8,1024], f32[8,1024]) {
  %state = (s32[], f32[8,1024]{1,0}, f32[8,1024]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %acc = f32[8,1024]{1,0} get-tuple-element(%state), index=1
  %xs = f32[8,1024]{1,0} get-tuple-element(%state), index=2
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  %update = f32[8,1024]{1,0} fusion(%acc, %i, %xs), kind=kLoop, calls=%row_twice
  ROOT %tuple = (s32[], f32[8,1024]{1,0}, f32[8,1024]{1,0}) tuple(%next, %update, %xs)
}

%cond (state.1: (s32[], f32[8,1024], f32[8,1024])) -> pred[] {
  %state.1 = (s32[], f32[8,1024]{1,0}, f32[8,1024]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%state.1), index=0
  %n = s32[] constant(8)
  ROOT %lt = pred[] compare(%i.1, %n), direction=LT
}

ENTRY %main (x: f32[8,1024], acc0: f32[8,1024]) -> f32[8,1024] {
  %x = f32[8,1024]{1,0} parameter(0)
  %acc0 = f32[8,1024]{1,0} parameter(1)
  %zero.1 = s32[] constant(0)
  %init = (s32[], f32[8,1024]{1,0}, f32[8,1024]{1,0}) tuple(%zero.1, %acc0, %x)
  %loop = (s32[], f32[8,1024]{1,0}, f32[8,1024]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"8"}}
  ROOT %result = f32[8,1024]{1,0} get-tuple-element(%loop), index=1
}
"""  # noqa: E501
# One trip: the counter's add (3 scalars), the fusion (index, the row read, the
# row written), the condition's compare (2 scalars and a pred).
LOOP_TRIP_BYTES = 12 + (4 + 2 * ROW) + 9


def test_elementwise_reads_and_writes_once():
    hlo = """
ENTRY %main (x: bf16[64,100]) -> bf16[64,100] {
  %x = bf16[64,100]{1,0} parameter(0)
  ROOT %neg = bf16[64,100]{1,0} negate(bf16[64,100]{1,0} %x)
}"""
    counts = hlo_traffic.count(hlo)
    assert counts.bytes == 2 * 64 * 100 * 2
    assert counts.flops == {}


def test_loop_counts_each_trip_and_only_the_slices():
    assert hlo_traffic.count(LOOP).bytes == 8 * LOOP_TRIP_BYTES


def test_trip_count_from_the_condition_without_annotation():
    bare = LOOP.replace(', backend_config={"known_trip_count":{"n":"8"}}', "")
    assert "known_trip_count" not in bare
    assert hlo_traffic.count(bare).bytes == 8 * LOOP_TRIP_BYTES
    assert hlo_traffic.count(bare.replace("constant(8)", "constant(3)")).bytes == (
        3 * LOOP_TRIP_BYTES
    )


def test_top_level_slices_and_updates():
    hlo = """
ENTRY %main (x: f32[8,1024], u: f32[1,1024], i: s32[]) -> (f32[1,1024], f32[8,1024]) {
  %x = f32[8,1024]{1,0} parameter(0)
  %u = f32[1,1024]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %zero = s32[] constant(0)
  %ds = f32[1,1024]{1,0} dynamic-slice(%x, %i, %zero), dynamic_slice_sizes={1,1024}
  %dus = f32[8,1024]{1,0} dynamic-update-slice(%x, %u, %i, %zero)
  ROOT %t = (f32[1,1024]{1,0}, f32[8,1024]{1,0}) tuple(%ds, %dus)
}"""
    # Each reads one row and writes one row, plus two s32 indices.
    assert hlo_traffic.count(hlo).bytes == 2 * (2 * ROW + 8)


def test_gathers_read_what_they_take():
    # A fusion that takes one logit per row (the label's), and a top-level gather.
    hlo = """
%pick (z: f32[8,1024], y: s32[8,1]) -> f32[8] {
  %z = f32[8,1024]{1,0} parameter(0)
  %y = s32[8,1]{1,0} parameter(1)
  %g = f32[8,1]{1,0} gather(%z, %y), offset_dims={1}, collapsed_slice_dims={}, start_index_map={1}, index_vector_dim=1, slice_sizes={1,1}
  %b = f32[8]{0} bitcast(%g)
  ROOT %n = f32[8]{0} negate(%b)
}

ENTRY %main (z: f32[8,1024], y: s32[8,1]) -> (f32[8], f32[8,1]) {
  %z = f32[8,1024]{1,0} parameter(0)
  %y = s32[8,1]{1,0} parameter(1)
  %f = f32[8]{0} fusion(%z, %y), kind=kLoop, calls=%pick
  %t = f32[8,1]{1,0} gather(%z, %y), offset_dims={1}, collapsed_slice_dims={}, start_index_map={1}, index_vector_dim=1, slice_sizes={1,1}
  ROOT %r = (f32[8]{0}, f32[8,1]{1,0}) tuple(%f, %t)
}"""  # noqa: E501
    # Each: 8 logits read, 8 indices read, 8 floats written.
    assert hlo_traffic.count(hlo).bytes == 2 * (3 * 8 * 4)


MATMULS = """
%gemm_computation (a: f32[64,128], b: f32[128,32]) -> f32[64,32] {
  %a = f32[64,128]{1,0} parameter(0)
  %b = f32[128,32]{1,0} parameter(1)
  ROOT %d = f32[64,32]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (s: (s32[], f32[64,128], f32[128,32])) -> (s32[], f32[64,128], f32[128,32]) {
  %s = (s32[], f32[64,128]{1,0}, f32[128,32]{1,0}) parameter(0)
  %a.1 = f32[64,128]{1,0} get-tuple-element(%s), index=1
  %b.1 = f32[128,32]{1,0} get-tuple-element(%s), index=2
  %g = f32[64,32]{1,0} fusion(%a.1, %b.1), kind=kCustom, calls=%gemm_computation
  ROOT %r = (s32[], f32[64,128]{1,0}, f32[128,32]{1,0}) tuple(/*index=0*/%g, %a.1, %b.1)
}

%cond (s.1: (s32[], f32[64,128], f32[128,32])) -> pred[] {
  %s.1 = (s32[], f32[64,128]{1,0}, f32[128,32]{1,0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

ENTRY %main (x: bf16[64,128], w: bf16[128,32], t: (s32[], f32[64,128], f32[128,32])) -> bf16[64,32] {
  %x = bf16[64,128]{1,0} parameter(0)
  %w = bf16[128,32]{1,0} parameter(1)
  %t = (s32[], f32[64,128]{1,0}, f32[128,32]{1,0}) parameter(2)
  %loop = (s32[], f32[64,128]{1,0}, f32[128,32]{1,0}) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"4"}}
  %mm = (bf16[64,32]{1,0}, s8[4194304]{0}) custom-call(bf16[64,128]{1,0} %x, bf16[128,32]{1,0} %w), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"alpha_real":1,"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  ROOT %out = bf16[64,32]{1,0} get-tuple-element(%mm), index=0
}
"""  # noqa: E501


def test_dot_flops_in_fusions_loops_and_gemm_calls():
    counts = hlo_traffic.count(MATMULS)
    flops = 2 * 64 * 32 * 128
    assert counts.flops == {"f32": 4 * flops, "bf16": flops}
    # The gemm's workspace (s8) is scratch, not traffic.
    fusion = 4 * (64 * 128 + 128 * 32 + 64 * 32)
    gemm = 2 * (64 * 128 + 128 * 32 + 64 * 32)
    assert counts.bytes == 4 * fusion + gemm


def test_convolution_flops():
    hlo = """
ENTRY %main (x: bf16[64,128], w: bf16[128,32]) -> bf16[64,32] {
  %x = bf16[64,128]{1,0} parameter(0)
  %w = bf16[128,32]{1,0} parameter(1)
  ROOT %c = bf16[64,32]{1,0} convolution(%x, %w), dim_labels=bf_io->bf
}"""
    assert hlo_traffic.count(hlo).flops == {"bf16": 2 * 64 * 32 * 128}


def test_on_chip_arrays_are_not_traffic():
    hlo = """
%f (p: f32[1024]) -> f32[1024] {
  %p = f32[1024]{0} parameter(0)
  ROOT %e = f32[1024]{0} exponential(%p)
}

ENTRY %main (x: f32[1024]) -> f32[1024] {
  %x = f32[1024]{0:T(1024)} parameter(0)
  %cs = (f32[1024]{0:T(1024)S(1)}, f32[1024]{0:T(1024)}, u32[]{:S(2)}) copy-start(%x)
  %cd = f32[1024]{0:T(1024)S(1)} copy-done(%cs)
  ROOT %y = f32[1024]{0:T(1024)} fusion(%cd), kind=kLoop, calls=%f
}"""
    # The prefetch reads x once; the fusion reads on-chip memory and writes y.
    assert hlo_traffic.count(hlo).bytes == 2 * 4096


def test_conditional_counts_its_largest_branch():
    hlo = """
%small (a: f32[16]) -> f32[16] {
  %a = f32[16]{0} parameter(0)
  ROOT %n = f32[16]{0} negate(%a)
}

%large (b: f32[16]) -> f32[16] {
  %b = f32[16]{0} parameter(0)
  %n.1 = f32[16]{0} negate(%b)
  ROOT %n.2 = f32[16]{0} negate(%n.1)
}

ENTRY %main (p: pred[], x: f32[16]) -> f32[16] {
  %p = pred[] parameter(0)
  %x = f32[16]{0} parameter(1)
  ROOT %c = f32[16]{0} conditional(%p, %x, %x), true_computation=%small, false_computation=%large
}"""
    assert hlo_traffic.count(hlo).bytes == 2 * 2 * 64


def test_roofline_takes_the_slower_side():
    h100 = hlo_traffic.TARGETS["h100"]
    memory_bound = hlo_traffic.Counts(bytes=3.35e12, flops={"bf16": 1e12})
    assert hlo_traffic.roofline(memory_bound, h100) == pytest.approx(1.0)
    compute_bound = hlo_traffic.Counts(bytes=1.0, flops={"bf16": 989e12, "f32": 494e12})
    assert hlo_traffic.roofline(compute_bound, h100) == pytest.approx(2.0)
    v5e = hlo_traffic.TARGETS["tpu-v5e"]
    assert hlo_traffic.roofline(hlo_traffic.Counts(flops={"f32": 197e12}), v5e) == 1.0


def test_top_kernels_names_the_heaviest():
    (name, runs, total, flops), *_ = hlo_traffic.top_kernels(MATMULS)
    assert (name, runs, flops) == ("g", 4, 4 * 2 * 64 * 32 * 128)
    assert total == 4 * 4 * (64 * 128 + 128 * 32 + 64 * 32)


def test_a_cpu_compiled_elementwise_op():
    x = jnp.ones((1000, 256), jnp.float32)
    hlo = jax.jit(lambda x: 2 * x + 1).lower(x).compile().as_text()
    counts = hlo_traffic.count(hlo)
    assert counts.bytes == 2 * x.nbytes
    assert counts.total_flops == 0


def test_a_cpu_compiled_scan_is_trip_count_aware():
    def f(xs, w):
        return jax.lax.scan(lambda c, x: (c + jnp.sum(x @ w), None), 0.0, xs)[0]

    xs, w = jnp.ones((6, 8, 16)), jnp.ones((16, 32))
    hlo = jax.jit(f).lower(xs, w).compile().as_text()
    assert hlo_traffic.count(hlo).flops == {"f32": 6 * 2 * 8 * 32 * 16}


def test_no_entry_is_an_error():
    with pytest.raises(ValueError, match="ENTRY"):
        hlo_traffic.parse("HloModule empty")
