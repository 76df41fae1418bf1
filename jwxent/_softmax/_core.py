"""The derivative core of every softmax loss: per-row statistics of the logits.

Every softmax-family loss is a plain-JAX function of a few statistics of each
row of logits `z` (class axis last), computed by `row_stats`. With the adjusted
logits `z̃ = z + δ` (`offsets`, the logit adjustment) and, for integer labels,
`z̃_y = z_y + δ_y − m_y` (`margins`, LDAM):

* `shift` and `log_sum`, with `logsumexp(z̃) = shift + log_sum`. They are kept
  apart so that `softmax(z̃) = exp(z̃ − shift − log_sum)` stays exact for huge
  logits (one rounded log-sum-exp of 1e8 would lose the `log 2` of two tied
  logits). `shift` has no derivative: the value of `logsumexp` does not depend
  on it.
* `picked = z̃_y`, the label's logit, without a one-hot;
* `dots[name] = Σ_k t_k (z̃_k − shift)` for each named target
  `t = rows · classes` (probability labels times class weights, or a `[C]`
  smoothing target), with `0·(−inf) = 0`. The shift is taken out inside the
  sum, so `Σ_k t_k (lse − z̃_k) = log_sum·Σ_k t_k − dot` (`cross_entropy`)
  keeps the precision of the integer-label `nll` when the targets sit on the
  largest logit;
* `prob_dots[name] = Σ_k t_k softmax(z̃)_k` (the poly loss only);
* `masses[name] = Σ_k t_k` for each target with rows (probability labels):
  the example's label weight, summed in the dots' pass.

`row_stats` is a `jax.custom_jvp`. Its tangent map is linear in the tangents
and needs only the logits and the per-row statistics:

    d log_sum  = Σ_k p_k dz̃_k            d picked = dz̃_y
    d dot      = Σ_k t_k dz̃_k + Σ_k dt_k (z̃_k − shift)
    d prob_dot = Σ_k dt_k p_k + Σ_k t_k p_k dz̃_k − prob_dot · d log_sum
    d mass     = Σ_k dt_k

JAX transposes it into the fused backward pass, `dz = g·p + g_picked·e_y + g_dot·t`.
The map runs under `jax.checkpoint` with nothing saveable, so reverse mode
keeps as residuals only the inputs and the `[batch]` statistics and recomputes
`p = exp(z̃ − shift − log_sum)` inside the backward pass: no `[batch, classes]`
probability, one-hot or float32 copy, even without `jit`. Forward mode,
`linearize`, `hessian` and any order of differentiation use the same rule.

The passes have a generic form (here) and an XLA:CPU form (`_xla_cpu.py`),
chosen when the program is lowered (`_platform.by_platform`).
"""

import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jwxent._derivatives import with_tangent_map
from jwxent._numerics import compute_dtype, expand_rank, finite_or_zero, sum_present
from jwxent._platform import by_platform, generic_active
from jwxent._softmax import _xla_cpu
from jwxent._softmax._passes import (
    Label,
    label_logit,
    label_tangent,
    lse_and_dots,
    probabilities,
    row_pieces,
    separate,
    shifted,
    take_class,
    target_values,
)
from jwxent._typing import Array


class Target(NamedTuple):
    """A target `t = rows · classes` of a dot; a missing factor is 1.

    Attributes:
      rows: `[..., C]` per-example factor (probability labels), or None.
      classes: `[C]` per-class factor (class weights), or None.
    """

    rows: Array | None = None
    classes: Array | None = None


class RowStats(NamedTuple):
    """Per-row statistics of the adjusted logits, each `[...]` in the compute dtype."""

    shift: Array
    log_sum: Array
    picked: Array
    dots: dict[str, Array]
    prob_dots: dict[str, Array]
    masses: dict[str, Array]

    @property
    def lse(self) -> Array:
        """`logsumexp(z̃)`."""
        return self.shift + self.log_sum

    @property
    def nll(self) -> Array:
        """`−log softmax(z̃)_y`, summed so that it stays exact for huge logits."""
        return self.log_sum + (self.shift - self.picked)

    def cross_entropy(self, name: str, total: Array) -> Array:
        """`Σ_k t_k (lse − z̃_k)` of the target `name`, whose sum per row is `total`."""
        return self.log_sum * total - self.dots[name]


# ---------------------------------------------------------------------------
# The custom-JVP core.
# ---------------------------------------------------------------------------


class _Inputs(NamedTuple):
    logits: Array
    class_mask: Array | None
    labels: Array | None
    offsets: Array | None
    margins: Array | None
    targets: dict[str, Target]


def _forward(with_prob_dots: bool, inputs: _Inputs) -> RowStats:
    z, class_mask, labels, offsets, margins, targets = inputs
    dtype = compute_dtype(z.dtype)
    label = None
    if labels is not None:
        logit = by_platform(z, labels, cpu=_xla_cpu.label_logit, default=label_logit)
        logit = logit.astype(dtype)
        if offsets is not None:
            logit = logit + take_class(offsets.astype(dtype), labels)
        margin = None if margins is None else take_class(margins.astype(dtype), labels)
        label = Label(labels, logit, margin)
    shift, log_sum, plain_dots, plain_prob_dots, plain_masses = by_platform(
        z,
        class_mask,
        offsets,
        label,
        tuple(tuple(t) for t in targets.values()),
        cpu=functools.partial(_xla_cpu.lse_and_dots, with_prob_dots=with_prob_dots),
        default=functools.partial(lse_and_dots, with_prob_dots=with_prob_dots, pieces=True),
        # TPUs keep long rows whole (`row_pieces`); traced only where a row is cut.
        tpu=functools.partial(lse_and_dots, with_prob_dots=with_prob_dots)
        if row_pieces(z) > 1
        else None,
    )
    if label is None:  # laid out (and varying over mesh axes) like the row statistics
        picked = jnp.zeros_like(shift)
    else:
        picked = label.logit if label.margin is None else label.logit - label.margin
    dots = {}
    for (name, t), dot in zip(targets.items(), plain_dots, strict=True):
        if label is not None and label.margin is not None:
            dot = dot - _target_at_label(t, label.labels, dtype) * label.margin
        dots[name] = dot
    prob_dots = dict(zip(targets, plain_prob_dots, strict=True)) if with_prob_dots else {}
    masses = {name: m for name, m in zip(targets, plain_masses, strict=True) if m is not None}
    return RowStats(shift, log_sum, picked, dots, prob_dots, masses)


def _d_target_at_label(t: Target, dt: Target, labels: Array, dtype: jnp.dtype) -> Array | None:
    """The tangent of `t` at each row's label (None if `t` has none)."""
    return sum_present(
        None if dt.rows is None else _target_at_label(Target(dt.rows, t.classes), labels, dtype),
        None if dt.classes is None else _target_at_label(Target(t.rows, dt.classes), labels, dtype),
    )


def _target_at_label(t: Target, labels: Array, dtype: jnp.dtype) -> Array:
    value = jnp.ones(labels.shape, dtype)
    if t.classes is not None:
        value = take_class(t.classes.astype(dtype), labels)
    if t.rows is not None:
        value = value * label_logit(t.rows, labels).astype(dtype)
    return value


def _sum_rows(x: Array | None) -> Array | None:
    return None if x is None else jnp.sum(x, axis=-1)


def _scale(x: Array | None, factor: Array) -> Array | None:
    return None if x is None else factor * x


def _tangent_map(
    static: tuple[bool, bool], inputs: _Inputs, stats: RowStats, d_inputs: _Inputs
) -> RowStats:
    """The tangents of `stats`, linear in `d_inputs` (None: no tangent).

    Under `jax.checkpoint` (`_derivatives`), reverse mode recomputes the
    probabilities here in the backward pass instead of storing them.
    """
    with_prob_dots, _ = static
    z, class_mask, labels, offsets, margins, targets = inputs
    dz, _, _, d_offsets, d_margins, d_targets = d_inputs
    dtype = stats.log_sum.dtype
    ndim = z.ndim
    # The backward pass reads the logits and the targets under its own names
    # (XLA:CPU): a target product shared with the forward pass is written out.
    z, (shift, log_sum, picked, offsets, targets) = by_platform(
        z,
        (stats.shift, stats.log_sum, stats.picked, offsets, targets),
        cpu=_xla_cpu.separate,
        default=separate,
    )
    margin = d_margin = None
    if margins is not None and labels is not None:
        margin = take_class(margins.astype(dtype), labels)
    # The softmax of z̃ with the label's logit lowered by its margin.
    label = None if margin is None or labels is None else Label(labels, picked, margin)
    p = probabilities(z, class_mask, offsets, shift, log_sum, label)
    # Tangent of the adjusted logits z̃ = z + δ (the margin's own below).
    dzf = None if dz is None else dz.astype(dtype)
    dzt = sum_present(
        dzf, None if d_offsets is None else expand_rank(d_offsets.astype(dtype), ndim)
    )
    d_log_sum = _sum_rows(None if dzt is None else p * dzt)

    d_picked = None
    if d_margins is not None and labels is not None:
        d_margin = take_class(d_margins.astype(dtype), labels)
    if labels is not None:
        d_picked = None if dzf is None else label_tangent(dzf, labels)
        if d_offsets is not None:
            d_picked = sum_present(d_picked, take_class(d_offsets.astype(dtype), labels))
        if d_margin is not None:
            p_label = jnp.exp(picked - shift - log_sum)
            d_log_sum = sum_present(d_log_sum, -p_label * d_margin)
            d_picked = sum_present(d_picked, -d_margin)

    zt = finite_or_zero(shifted(z, offsets, shift, dtype))
    d_dots, d_prob_dots, d_masses = {}, {}, {}
    for name, t in targets.items():
        dt = d_targets[name]
        values = target_values(t.rows, t.classes, ndim, dtype)
        d_values = sum_present(
            None if dt.rows is None else target_values(dt.rows, t.classes, ndim, dtype),
            None if dt.classes is None else target_values(t.rows, dt.classes, ndim, dtype),
        )
        d_dot = sum_present(
            _sum_rows(None if dzt is None else values * dzt),
            _sum_rows(None if d_values is None else d_values * zt),
        )
        if margin is not None and labels is not None:
            # dot = Σ t·(z + δ) − t_y·m_y: the margin's own terms.
            d_dot = sum_present(
                d_dot,
                _scale(_d_target_at_label(t, dt, labels, dtype), -margin),
                None if d_margin is None else -_target_at_label(t, labels, dtype) * d_margin,
            )
        d_dots[name] = d_dot
        if name in stats.masses:
            d_masses[name] = _sum_rows(d_values)
        if with_prob_dots:
            d_prob = sum_present(
                _sum_rows(None if d_values is None else d_values * p),
                _sum_rows(None if dzt is None else values * p * dzt),
                _scale(d_log_sum, -stats.prob_dots[name]),
            )
            d_prob_dots[name] = d_prob
    return RowStats(None, d_log_sum, d_picked, d_dots, d_prob_dots, d_masses)  # type: ignore[arg-type]


def _forward_of(static: tuple[bool, bool], inputs: _Inputs) -> RowStats:
    """`_forward`; the static `(with_prob_dots, generic)`, where `generic` keys the
    traces cached for `_platform.generic_only`."""
    with_prob_dots, _ = static
    return _forward(with_prob_dots, inputs)


_row_stats = with_tangent_map(_forward_of, _tangent_map)


def row_stats(
    logits: Array,
    *,
    class_mask: Array | None = None,
    labels: Array | None = None,
    offsets: Array | None = None,
    margins: Array | None = None,
    targets: Mapping[str, Target] | None = None,
    with_prob_dots: bool = False,
) -> RowStats:
    """Per-row statistics of `[..., C]` logits, differentiable in every mode.

    Args:
      logits: `[..., C]` floating point.
      class_mask: bool `[..., C]` of the classes in the softmax, or None for
        all. Every row must keep at least one class.
      labels: integer `[...]` within `[0, C)`, or None (then `picked` is 0).
      offsets: `[C]` logit adjustment `δ` added inside the softmax, or None.
      margins: `[C]` label margins `m` (with `labels`), or None.
      targets: the named targets of `dots` (and `prob_dots`), or None.
      with_prob_dots: compute `prob_dots` (static; not with `margins`).

    Returns:
      `RowStats` of `[...]` arrays in the compute dtype.
    """
    inputs = _Inputs(logits, class_mask, labels, offsets, margins, dict(targets or {}))
    if logits.shape[-1] == 0:
        return _without_classes(with_prob_dots, inputs)
    return _compiled_row_stats(with_prob_dots, generic_active(), inputs)


def _without_classes(with_prob_dots: bool, inputs: _Inputs) -> RowStats:
    """Statistics of rows with no class: every loss is an empty sum, 0 (as optax's).

    `lse` is taken as 0, not −inf, so that `lse · Σ_k t_k` (= 0) and the
    z-loss stay finite; an integer label cannot be in range, and the
    label-range check reports it.
    """
    zeros = jnp.zeros(inputs.logits.shape[:-1], compute_dtype(inputs.logits.dtype))
    dots = dict.fromkeys(inputs.targets, zeros)
    masses = {name: zeros for name, t in inputs.targets.items() if t.rows is not None}
    return RowStats(zeros, zeros, zeros, dots, dots if with_prob_dots else {}, masses)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _compiled_row_stats(with_prob_dots: bool, generic: bool, inputs: _Inputs) -> RowStats:
    """`_row_stats` as one compiled program when called eagerly (inlined under `jit`).

    Eagerly, every primitive of the core would otherwise be dispatched (and,
    for a new shape, compiled) on its own. `generic` keys the cache on
    `_platform.generic_only`.
    """
    return _row_stats((with_prob_dots, generic), inputs)
