"""`linear_softmax_cross_entropy`: validation, the two implementations, the loss.

The `"chunked"` implementation takes per-row statistics from the streamed core
in `_core.py` and builds the loss from them in plain JAX, exactly as
`_softmax.py` builds `softmax_cross_entropy_with_integer_labels` from its core;
`"xla"` computes the whole logits and calls that function.
"""

from typing import Literal

import jax.numpy as jnp

from jwxent import _checks, _reduction
from jwxent._fused_linear._core import linear_logit_stats, make_plan
from jwxent._softmax import compute_dtype, softmax_cross_entropy_with_integer_labels
from jwxent._typing import Array, ArrayLike, Reduction

Implementation = Literal["xla", "chunked"]
_IMPLEMENTATIONS: tuple[str, ...] = ("xla", "chunked")

# ---------------------------------------------------------------------------
# Validation and the loss on top of the per-row statistics.
# ---------------------------------------------------------------------------


def _check_inputs(x: Array, w: Array, labels: Array, bias: Array | None) -> None:
    _checks.check_floating(x, "x")
    _checks.check_floating(w, "w")
    _checks.check_integer(labels, "labels")
    if x.ndim == 0:
        raise ValueError("`x` must have a hidden axis, [*batch, hidden]; got a scalar.")
    if w.ndim != 2 or w.shape[0] != x.shape[-1]:
        raise ValueError(
            f"`w` must have shape [hidden, vocab] with hidden = x.shape[-1] = {x.shape[-1]}; "
            f"got {tuple(w.shape)}."
        )
    if w.dtype != x.dtype:
        raise TypeError(
            f"`x` and `w` must have the same dtype; got {x.dtype} and {w.dtype}. "
            "Cast one explicitly."
        )
    _checks.check_shape(labels, x.shape[:-1], "labels", "x.shape[:-1]")
    if bias is not None:
        _checks.check_floating(bias, "bias")
        _checks.check_shape(bias, w.shape[1:], "bias", "[vocab]")


def _check_options(
    label_smoothing: float,
    z_loss: float,
    reduction: str,
    logit_soft_cap: float | None,
    chunk_size: int | None,
    implementation: str | None,
) -> None:
    _checks.check_label_smoothing(label_smoothing)
    _checks.check_nonnegative(z_loss, "z_loss")
    _checks.check_reduction(reduction)
    if logit_soft_cap is not None and not logit_soft_cap > 0:
        raise ValueError(f"`logit_soft_cap` must be None or > 0; got {logit_soft_cap}.")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"`chunk_size` must be None or a positive int; got {chunk_size!r}.")
    if implementation is not None and implementation not in _IMPLEMENTATIONS:
        raise ValueError(
            f"`implementation` must be None or one of {', '.join(map(repr, _IMPLEMENTATIONS))}; "
            f"got {implementation!r}."
        )


def _capped(z: Array, logit_soft_cap: float | None) -> Array:
    return z if logit_soft_cap is None else logit_soft_cap * jnp.tanh(z / logit_soft_cap)


def _xla_loss(x, w, labels, bias, logit_soft_cap, **loss_options) -> Array:
    """The unfused path: `[*batch, vocab]` logits, then the softmax loss."""
    z = jnp.matmul(x, w, preferred_element_type=compute_dtype(x.dtype))
    if bias is not None:
        z = z + bias.astype(z.dtype).reshape((1,) * (z.ndim - 1) + bias.shape)
    return softmax_cross_entropy_with_integer_labels(
        _capped(z, logit_soft_cap), labels, **loss_options
    )


def _chunked_loss(
    x: Array,
    w: Array,
    labels: Array,
    bias: Array | None,
    logit_soft_cap: float | None,
    *,
    where: ArrayLike | None,
    weights: ArrayLike | None,
    class_weights: ArrayLike | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    reduction: Reduction,
    chunk_size: int | None,
) -> Array:
    """The streamed path: per-row statistics from the core, the loss in plain JAX."""
    batch_shape, vocab = labels.shape, w.shape[1]
    dtype = compute_dtype(x.dtype)
    mask = _reduction.combine_masks(
        _reduction.example_mask(batch_shape, where=where),
        _reduction.example_mask(batch_shape, labels=labels, ignore_index=ignore_index),
    )
    _checks.check_labels_in_range(labels, vocab, mask)
    in_range = (labels >= 0) & (labels < vocab)
    safe_labels = jnp.where(in_range if mask is None else in_range & mask, labels, 0)
    rows = x.reshape(-1, x.shape[-1])
    if mask is not None:
        # Masked rows become zeros, so nothing non-finite in them reaches the gradient.
        rows = jnp.where(mask.reshape(-1, 1), rows, jnp.zeros_like(rows))
    cw = None
    if class_weights is not None:
        cw = jnp.asarray(class_weights)
        _checks.check_class_weights(cw, vocab)
        cw = cw.astype(dtype)
    targets = None
    if label_smoothing:
        targets = cw if cw is not None else jnp.ones(vocab, dtype)

    plan = make_plan(rows.shape[0], vocab, chunk_size, logit_soft_cap)
    stats = linear_logit_stats(plan, rows, w, bias, safe_labels.reshape(-1), targets, cw)
    lse, picked, dot, picked_weight = (s.reshape(batch_shape) for s in stats)
    # Out-of-range labels under jit: NaN for that example, never a clamped value.
    nll = jnp.where(in_range if mask is None else in_range | ~mask, lse - picked, jnp.nan)
    label_weight = None if cw is None else picked_weight
    loss = _reduction.scale(nll, label_weight)
    if targets is not None:
        smooth = lse * jnp.sum(targets) - dot
        loss = (1.0 - label_smoothing) * loss + (label_smoothing / vocab) * smooth
    if z_loss:
        loss = loss + _reduction.scale(z_loss * jnp.square(lse), label_weight)
    example_weight = _reduction.example_weights(weights, batch_shape, dtype)
    return _reduction.reduce_loss(
        _reduction.scale(loss, example_weight),
        reduction,
        mask=mask,
        weight=_reduction.multiply(example_weight, label_weight),
    )


# ---------------------------------------------------------------------------
# The public loss.
# ---------------------------------------------------------------------------


def linear_softmax_cross_entropy(
    x: ArrayLike,
    w: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    class_weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_soft_cap: float | None = None,
    reduction: Reduction = "none",
    chunk_size: int | None = None,
    implementation: Implementation | None = None,
) -> Array:
    r"""Softmax cross-entropy of a linear projection, without the `[tokens, vocab]` logits.

    Computes what
    `softmax_cross_entropy_with_integer_labels(x @ w + bias, labels, ...)`
    computes, for language-model heads and extreme classification where the
    logits do not fit in memory (Apple's Cut Cross-Entropy, Liger's
    `FusedLinearCrossEntropyLoss`, tokamax's `linear_softmax_cross_entropy_loss`).
    The default `"chunked"` implementation streams over blocks of `chunk_size`
    vocabulary columns in both passes, so temp memory is
    O(tokens × chunk_size) instead of O(tokens × vocab).

    With logits $z = \mathrm{cap}(x W + b)$, where the optional soft cap of
    Gemma 2 is $\mathrm{cap}(u) = c\tanh(u / c)$, and the notation of
    `softmax_cross_entropy_with_integer_labels`:

    $$
    \ell = (1-\varepsilon)\,c_y\,(-\log p_y)
      + \frac{\varepsilon}{V}\sum_k c_k\,(-\log p_k)
      + \lambda_z\,c_y\,\bigl(\log\textstyle\sum_k e^{z_k}\bigr)^2 ,
      \qquad p = \mathrm{softmax}(z),
    $$

    weighted by $w = \text{weights}\cdot c_y$ and combined by `reduction`.

    Args:
      x: `[*batch, hidden]` floating-point features (the last hidden state).
      w: `[hidden, vocab]` projection (the unembedding), same dtype as `x`.
      labels: integer `[*batch]` class indices in `[0, vocab)`.
      bias: optional `[vocab]` bias added to the logits.
      weights: per-example multiplier broadcastable to `[*batch]`.
      class_weights: `[vocab]`, gathered by label (PyTorch `weight=`).
      where: bool mask broadcastable to `[*batch]`; masked examples give
        exactly 0 loss and 0 gradient.
      ignore_index: examples with this label are masked (PyTorch).
      label_smoothing: $\varepsilon \in [0, 1)$, PyTorch semantics.
      z_loss: $\lambda_z \ge 0$, adds $\lambda_z\,c_y\,\mathrm{lse}^2$ per example.
      logit_soft_cap: $c > 0$ of the Gemma 2 logit soft cap, or None.
      reduction: `"none"`, `"sum"`, `"mean"`, `"weighted_mean"` or
        `"sum_by_nonzero_weights"`.
      chunk_size: vocabulary columns per block of the `"chunked"`
        implementation (None: about 2²³ logits per block, at most 1/16 of the
        vocabulary, preferring a divisor of `vocab`). Any value works; a
        divisor of `vocab` avoids a tail block. Ignored by `"xla"`.
      implementation: `"chunked"` (streamed, the default for None) or
        `"xla"` (the unfused `x @ w` then the softmax loss, for reference).

    Returns:
      `[*batch]` losses for `reduction="none"`, else a scalar; float32 for
      half-precision inputs, the inputs' dtype otherwise.

    Raises:
      TypeError: non-floating `x`, `w` or `bias`, `x` and `w` of different
        dtypes, non-integer `labels`.
      ValueError: mismatched shapes, an unknown `reduction` or
        `implementation`, bad `label_smoothing`, `z_loss`, `logit_soft_cap` or
        `chunk_size`, and, in eager calls, labels out of range. Under `jit` an
        out-of-range label gives NaN for its example.

    Examples:
      Logits `x @ w` are `[[1, 0, 0], [0, 2, 0]]`, so the losses are
      `log(e + 2) − 1` and `log(e² + 2) − 2`:

      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> w = jnp.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
      >>> labels = jnp.array([0, 1])
      >>> print(jwxent.linear_softmax_cross_entropy(x, w, labels, chunk_size=2))
      [0.5514 0.2395]
      >>> print(jwxent.linear_softmax_cross_entropy(x, w, labels, reduction="mean"))
      0.3955

    Notes:
      The `"chunked"` gradient is a hand-written `jax.custom_vjp` that saves
      the inputs and one log-sum-exp per token and recomputes each block's
      logits in the backward pass (one extra `x @ w` of compute). Cotangents
      are returned for `x`, `w`, `bias`, `weights` and `class_weights`.
      Reverse mode only: `jax.jvp` / `jax.jacfwd` are not supported. Under
      `jit` with `w` sharded along the vocabulary (with `chunk_size` a
      multiple of the number of shards that divides `vocab`), only `[tokens]`
      vectors cross devices; see the Scaling page of the docs.

    References:
      Wijmans et al., *Cut Your Losses in Large-Vocabulary Language Models*,
      ICLR 2025. Gemma Team, *Gemma 2: Improving Open Language Models at a
      Practical Size*, 2024 (logit soft-capping).
    """
    x, w, labels = jnp.asarray(x), jnp.asarray(w), jnp.asarray(labels)
    bias = None if bias is None else jnp.asarray(bias)
    _check_inputs(x, w, labels, bias)
    _check_options(label_smoothing, z_loss, reduction, logit_soft_cap, chunk_size, implementation)
    loss_options = {
        "where": where,
        "weights": weights,
        "class_weights": class_weights,
        "ignore_index": ignore_index,
        "label_smoothing": label_smoothing,
        "z_loss": z_loss,
        "reduction": reduction,
    }
    if implementation == "xla":
        if where is not None:
            _checks.check_broadcastable(jnp.asarray(where), labels.shape, "where")
        return _xla_loss(x, w, labels, bias, logit_soft_cap, **loss_options)
    return _chunked_loss(x, w, labels, bias, logit_soft_cap, chunk_size=chunk_size, **loss_options)
