"""The performance bars, checked on one row of a rendered table.

The bars are the project's own, stated in docs/benchmarks.md ("The bars of
the contract").

A `Row` is one (shape, dtype, loss) of a family on one machine: jwxent's
`value_and_grad` against the family's reference and the floor. A bar is a
function `Row -> (label, met) | None`, None where it does not apply to the
row or the row lacks the numbers (no timing, no floor). A `Variant` lists the
bars that apply to it; `verdict` turns them into the table's last column.
"""

import dataclasses
from collections.abc import Callable, Iterable

TEMP_BYTES_PER_ROW = 64
"""O(batch) temp memory, made concrete: at most this many bytes per example."""


@dataclasses.dataclass(frozen=True)
class Row:
    """jwxent's numbers for one (shape, dtype, loss), `value_and_grad` unless named `fwd`.

    Ratios are jwxent's median time divided by the other's; None where a
    number is missing.
    """

    shape: str
    dtype: str
    loss: str
    batch: int
    reference: str
    time_s: float | None = None
    ratio: float | None = None
    fwd_ratio: float | None = None
    other_ratios: dict[str, float | None] = dataclasses.field(default_factory=dict)
    floor_ratio: float | None = None
    hbm_ratio: float | None = None
    temp_bytes: int | None = None
    reference_temp_bytes: int | None = None
    traffic_bytes: float | None = None
    reference_traffic_bytes: float | None = None
    bound: str | None = None


Bar = Callable[[Row], tuple[str, bool] | None]

TIME_LIMITS = {"f32": 1.0, "bf16": 0.5}


def time_vs_reference(row: Row) -> tuple[str, bool] | None:
    """Integer and probability labels: f32 ≤ 1.0×, bf16 ≤ 0.5× optax's time."""
    limit = TIME_LIMITS.get(row.dtype)
    if limit is None or row.ratio is None:
        return None
    return f"time ≤ {limit}× {row.reference}", row.ratio <= limit


def temp_per_row(row: Row) -> tuple[str, bool] | None:
    """bf16 logits: temp memory O(batch), at most `TEMP_BYTES_PER_ROW` per example."""
    if row.dtype != "bf16" or row.temp_bytes is None:
        return None
    return f"temp ≤ {TEMP_BYTES_PER_ROW} B/row", row.temp_bytes <= TEMP_BYTES_PER_ROW * row.batch


def within_floor(row: Row) -> tuple[str, bool] | None:
    """Integer labels: within 1.3× of the measured floor."""
    if row.floor_ratio is None:
        return None
    return "≤ 1.3× floor", row.floor_ratio <= 1.3


def within_hbm_floor(row: Row) -> tuple[str, bool] | None:
    """Accelerators, integer labels: within 1.2× of the HBM floor."""
    if row.hbm_ratio is None:
        return None
    return "≤ 1.2× HBM floor", row.hbm_ratio <= 1.2


def fused_temp(row: Row) -> tuple[str, bool] | None:
    """Fused linear CE: temp memory ≤ 1/8 of the unfused `x @ w` + CE."""
    if row.temp_bytes is None or row.reference_temp_bytes is None:
        return None
    return f"temp ≤ 1/8 {row.reference}", 8 * row.temp_bytes <= row.reference_temp_bytes


def fused_time(row: Row) -> tuple[str, bool] | None:
    """Fused linear CE: time ≤ 1.15× the unfused."""
    if row.ratio is None:
        return None
    return f"time ≤ 1.15× {row.reference}", row.ratio <= 1.15


TARGET_TEMP_BYTES_PER_ROW = 2048
"""Compiled for an accelerator: temp O(batch) means at most this many bytes per example."""


def target_temp(row: Row) -> tuple[str, bool] | None:
    """Accelerator estimate: temp ≤ 2 KiB per example, or no more than the reference's."""
    if row.temp_bytes is None:
        return None
    per_row = row.temp_bytes <= TARGET_TEMP_BYTES_PER_ROW * row.batch
    no_more = row.reference_temp_bytes is not None and row.temp_bytes <= row.reference_temp_bytes
    return "temp ≤ 2 KiB/row or ref", per_row or no_more


def target_traffic(row: Row) -> tuple[str, bool] | None:
    """Accelerator estimate: traffic ≤ 1.05× the reference's."""
    if row.traffic_bytes is None or not row.reference_traffic_bytes:
        return None
    return (
        f"traffic ≤ 1.05× {row.reference}",
        row.traffic_bytes <= 1.05 * row.reference_traffic_bytes,
    )


LABELS: tuple[Bar, ...] = (time_vs_reference, temp_per_row)
"""Integer labels with smoothing or z-loss, probability labels."""
INTEGER_LABELS: tuple[Bar, ...] = (*LABELS, within_floor, within_hbm_floor)
"""The plain integer-label loss."""
FUSED: tuple[Bar, ...] = (fused_temp, fused_time)
TARGET: tuple[Bar, ...] = (target_temp, target_traffic)
"""Every loss but the fused one, compiled for an accelerator (`benchmarks.run --target`)."""


def target_bars(variant_bars: tuple[Bar, ...]) -> tuple[Bar, ...]:
    """The bars of a variant's estimate on an accelerator: the fused loss keeps its own."""
    return FUSED if variant_bars == FUSED else TARGET


def verdict(row: Row, bars: Iterable[Bar]) -> str:
    """`meets`, `misses: <bars>`, or `–` where no bar applies."""
    checked = [result for bar in bars if (result := bar(row)) is not None]
    if not checked:
        return "–"
    missed = [label for label, met in checked if not met]
    return f"misses: {', '.join(missed)}" if missed else "meets"
