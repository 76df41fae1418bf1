"""One pipeline for every softmax-family loss: prepare → per-row term → finish.

* `prepare_integer` / `prepare_probability`: the logits canonicalised
  (`_inputs.PreparedLogits`), the labels checked and masked, the per-class
  vectors checked, the masked rows neutralised; one `Prepared` value.
* the loss's own per-row term, from the core's statistics (`row_stats`):
  `integer_cross_entropy` and `probability_cross_entropy` here (the first
  also per chunk of the fused loss), the focal terms in `_focal.py`;
  `smoothed` mixes a term with its label-smoothing spread, for all of them.
* `finish`: the z-loss, the label-range NaN (`example_finish`, also per
  chunk of the fused loss), the cost-matrix weight and the reduction.

A new option is a field of `Options`, a step here or a term, and its docs.
"""

from typing import NamedTuple

import jax.numpy as jnp

from jwxent import _reduction
from jwxent._numerics import hyperparameter, is_static_zero
from jwxent._softmax._core import RowStats, Target, row_stats
from jwxent._softmax._inputs import (
    PreparedLogits,
    check_smoothing_has_classes,
    check_smoothing_without_class_mask,
    cost_weight,
    label_margin_vector,
    prepare_integer_labels,
    prepare_probability_labels,
    probability_smoothing,
)
from jwxent._softmax._options import Options
from jwxent._typing import Array, ArrayLike, Axis


class Prepared(NamedTuple):
    """The inputs of one softmax loss, checked, canonicalised and masked.

    Attributes:
      logits: the canonical `PreparedLogits` (shapes, compute dtype, masks).
      z: `[*batch, C]` logits with the masked rows neutralised.
      class_mask: bool `[*batch, C]` of the classes in the softmax, or None.
      mask: bool `[*batch]` of the examples that count, or None.
      labels: `[*batch]` integer labels, safe to pick (None: probability labels).
      valid: bool `[*batch]`, False where an integer label is out of range.
      probabilities: `[*batch, C]` probability labels (None: integer labels).
      class_weights, offsets, margins: `[C]` vectors in the compute dtype, or None.
      label_weight: `[*batch]` weight the label gives the example, `c_y`, or
        None. For probability labels the loss sets `Σ_k c_k q_k` once its
        pass over the logits has summed it (None until then, and without
        class weights).
    """

    logits: PreparedLogits
    z: Array
    class_mask: Array | None
    mask: Array | None
    labels: Array | None
    valid: Array | None
    probabilities: Array | None
    class_weights: Array | None
    offsets: Array | None
    margins: Array | None
    label_weight: Array | None

    @property
    def num_classes(self) -> int:
        return self.logits.num_classes

    @property
    def dtype(self):
        return self.logits.dtype


def prepare_integer(
    logits: ArrayLike, labels: ArrayLike, axis: Axis, where: ArrayLike | None, options: Options
) -> Prepared:
    """The inputs of an integer-label loss (no one-hot is built)."""
    prepared = PreparedLogits(logits, axis, where)
    check_smoothing_without_class_mask(options.label_smoothing, prepared)
    targets = prepare_integer_labels(
        labels,
        batch_shape=prepared.batch_shape,
        num_classes=prepared.num_classes,
        dtype=prepared.dtype,
        row_mask=prepared.row_mask,
        class_weights=options.class_weights,
        ignore_index=options.ignore_index,
    )
    z, class_mask = prepared.masked_inputs(targets.mask)
    return Prepared(
        logits=prepared,
        z=z,
        class_mask=class_mask,
        mask=targets.mask,
        labels=targets.labels,
        valid=targets.valid,
        probabilities=None,
        class_weights=targets.class_weights,
        offsets=prepared.class_vector(options.logit_adjustment, "logit_adjustment"),
        margins=label_margin_vector(options.label_margins, prepared),
        label_weight=targets.label_weight,
    )


def prepare_probability(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: Axis | None,
    where: ArrayLike | None,
    options: Options,
) -> Prepared:
    """The inputs of a probability-label loss, the labels in the logits' layout."""
    prepared = PreparedLogits(logits, axis, where)
    check_smoothing_has_classes(options.label_smoothing, prepared)
    mask = prepared.row_mask
    q = prepare_probability_labels(labels, prepared, mask)
    cw = prepared.class_vector(options.class_weights, "class_weights")
    z, class_mask = prepared.masked_inputs(mask)
    return Prepared(
        logits=prepared,
        z=z,
        class_mask=class_mask,
        mask=mask,
        labels=None,
        valid=None,
        probabilities=q,
        class_weights=cw,
        offsets=prepared.class_vector(options.logit_adjustment, "logit_adjustment"),
        margins=None,
        label_weight=None,
    )


def smoothing(prepared: Prepared) -> tuple[Target, Array]:
    """The target `ε/C` spreads over (the class weights, on the unmasked classes), and
    its sum per row."""
    return probability_smoothing(prepared.logits, prepared.class_weights)


def statistics(
    prepared: Prepared, targets: dict[str, Target] | None = None, with_prob_dots: bool = False
) -> RowStats:
    """The core's per-row statistics of the prepared logits."""
    return row_stats(
        prepared.z,
        class_mask=prepared.class_mask,
        labels=prepared.labels,
        offsets=prepared.offsets,
        margins=prepared.margins,
        targets=targets,
        with_prob_dots=with_prob_dots,
    )


# ---------------------------------------------------------------------------
# Per-row terms.
# ---------------------------------------------------------------------------


def smoothed(
    term: Array, spread: Array | None, label_smoothing: ArrayLike, num_classes: int
) -> Array:
    """`(1 − ε)·term + (ε/C)·spread`: a loss term and its smoothing spread."""
    if spread is None or is_static_zero(label_smoothing):
        return term
    epsilon = hyperparameter(label_smoothing, term.dtype)
    return (1.0 - epsilon) * term + (epsilon / num_classes) * spread


def integer_cross_entropy(
    stats: RowStats,
    label_weight: Array | None,
    smoothing_total: Array | None,
    label_smoothing: ArrayLike,
    num_classes: int,
) -> Array:
    """`(1−ε)·c_y·nll + (ε/C)·Σ_k c_k·(lse − z̃_k)` per example.

    With label smoothing `stats.dots` holds `"smoothing"`, the dot with the
    smoothing target, whose sum per row is `smoothing_total`.
    """
    nll = _reduction.scale(stats.nll, label_weight)
    spread = None
    if smoothing_total is not None:
        spread = stats.cross_entropy("smoothing", smoothing_total)
    return smoothed(nll, spread, label_smoothing, num_classes)


def probability_cross_entropy(
    stats: RowStats, prepared: Prepared, smoothing_total: Array | None, options: Options
) -> Array:
    """`Σ_k t_k·(lse − z̃_k)` per example, `t = c·q̃`, plus PolyLoss's `ε·Σ_k t_k·(1 − p_k)`.

    `stats.dots` holds `"labels"` (and `"smoothing"` with label smoothing),
    `stats.masses` the labels' `Σ_k c_k q_k`.
    """
    mass = stats.masses["labels"]
    spread = None if smoothing_total is None else stats.cross_entropy("smoothing", smoothing_total)
    loss = smoothed(
        stats.cross_entropy("labels", mass), spread, options.label_smoothing, prepared.num_classes
    )
    if options.poly_epsilon is None:
        return loss
    poly_spread = None
    if smoothing_total is not None:
        poly_spread = smoothing_total - stats.prob_dots["smoothing"]
    poly = smoothed(
        mass - stats.prob_dots["labels"],
        poly_spread,
        options.label_smoothing,
        prepared.num_classes,
    )
    return loss + hyperparameter(options.poly_epsilon, prepared.dtype) * poly


# ---------------------------------------------------------------------------
# Finish.
# ---------------------------------------------------------------------------


def example_finish(
    loss: Array,
    lse: Array,
    label_weight: Array | None,
    valid: Array | None,
    z_loss: ArrayLike,
) -> Array:
    """The per-example loss complete: plus `λ_z·w·lse²`, NaN where a label is out of range.

    (An out-of-range label can only reach here under `jit`; eager calls raise.)
    """
    if not is_static_zero(z_loss):
        penalty = hyperparameter(z_loss, loss.dtype) * jnp.square(lse)
        loss = loss + _reduction.scale(penalty, label_weight)
    if valid is not None:
        loss = jnp.where(valid, loss, jnp.nan)
    return loss


def finish(loss: Array, stats: RowStats, prepared: Prepared, options: Options) -> Array:
    """`example_finish`, then the cost-matrix weight and the reduction."""
    loss = example_finish(loss, stats.lse, prepared.label_weight, prepared.valid, options.z_loss)
    cost = cost_weight(
        options.cost_matrix,
        prepared.logits,
        prepared.z,
        prepared.class_mask,
        labels=prepared.labels,
        probabilities=prepared.probabilities,
    )
    return _reduction.finish(
        loss,
        options.reduction,
        weights=options.weights,
        mask=prepared.mask,
        label_weight=prepared.label_weight,
        cost=cost,
    )
