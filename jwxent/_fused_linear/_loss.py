"""Fused linear projection + softmax cross-entropy: validation and the public loss.

`linear_softmax_cross_entropy(x, w, labels)` is
`softmax_cross_entropy_with_integer_labels(x @ w + bias, labels)` without the
`[tokens, vocab]` logits; `_sweep.py` streams over the chunks of `_chunks.py`.
"""

from typing import Literal

import jax.numpy as jnp

from jwxent import _checks, _reduction
from jwxent._fused_linear._chunks import accelerator_plan, gpu_chunks, make_plan, tpu_chunks
from jwxent._fused_linear._sweep import (
    Plans,
    Rows,
    Shared,
    capped,
    on_the_mesh_of_x,
    per_token,
    weighted_sum,
)
from jwxent._numerics import class_vector, compute_dtype, hyperparameter, is_static_zero
from jwxent._softmax._inputs import prepare_integer_labels
from jwxent._softmax._losses import softmax_cross_entropy_with_integer_labels
from jwxent._softmax._options import Options
from jwxent._typing import Array, ArrayLike, Reduction

Implementation = Literal["xla", "chunked"]
_IMPLEMENTATIONS: tuple[str, ...] = ("xla", "chunked")


# ---------------------------------------------------------------------------
# Validation and the public loss.
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


def _check_fused_options(
    logit_soft_cap: ArrayLike | None, chunk_size: int | None, implementation: str | None
) -> None:
    if logit_soft_cap is not None:
        _checks.check_hyperparameter(logit_soft_cap, "logit_soft_cap", minimum=0.0)
        known = _checks.concrete_value(logit_soft_cap)
        if known is not None and known == 0:
            raise ValueError(f"`logit_soft_cap` must be None or > 0; got {float(known)}.")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"`chunk_size` must be None or a positive int; got {chunk_size!r}.")
    if implementation is not None and implementation not in _IMPLEMENTATIONS:
        raise ValueError(
            f"`implementation` must be None or one of {', '.join(map(repr, _IMPLEMENTATIONS))}; "
            f"got {implementation!r}."
        )


def _optional(value: ArrayLike | None, dtype: jnp.dtype) -> Array | None:
    """A hyperparameter as a scalar array, or None when it is statically absent or 0."""
    if value is None or is_static_zero(value):
        return None
    return hyperparameter(value, dtype)


def _unfused_loss(x, w, labels, bias, logit_soft_cap, **options) -> Array:
    """The `"xla"` implementation: `[*batch, vocab]` logits, then the softmax loss."""
    dtype = compute_dtype(x.dtype)
    z = jnp.matmul(x, w, preferred_element_type=dtype)
    if bias is not None:
        z = z + bias.astype(dtype).reshape((1,) * (z.ndim - 1) + bias.shape)
    cap = None if logit_soft_cap is None else hyperparameter(logit_soft_cap, dtype)
    return softmax_cross_entropy_with_integer_labels(capped(z, cap), labels, **options)


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
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    logit_soft_cap: ArrayLike | None = None,
    logit_adjustment: ArrayLike | None = None,
    label_margins: ArrayLike | None = None,
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
    The default `"chunked"` implementation makes the logits of `chunk_size`
    tokens at a time, so temp memory is O(chunk_size × vocab) plus the
    gradient of `w` instead of O(tokens × vocab).

    With logits $z = \mathrm{cap}(x W + b)$, where the optional soft cap of
    Gemma 2 is $\mathrm{cap}(u) = c\tanh(u / c)$, and the notation of
    `softmax_cross_entropy_with_integer_labels` (logit adjustment $\delta$ and
    label margins $m$ included):

    $$
    \ell = (1-\varepsilon)\,c_y\,(-\log p_y)
      + \frac{\varepsilon}{V}\sum_k c_k\,(-\log p_k)
      + \lambda_z\,c_y\,\bigl(\log\textstyle\sum_k e^{\tilde z_k}\bigr)^2 ,
      \qquad p = \mathrm{softmax}(\tilde z),
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
      label_smoothing: $\varepsilon \in [0, 1)$, PyTorch semantics (may be traced).
      z_loss: $\lambda_z \ge 0$, adds $\lambda_z\,c_y\,\mathrm{lse}^2$ per
        example (may be traced).
      logit_soft_cap: $c > 0$ of the Gemma 2 logit soft cap, or None (may be
        traced).
      logit_adjustment: `[vocab]` offsets added inside the softmax only.
      label_margins: `[vocab]` margins subtracted from the label's logit.
      reduction: `"none"`, `"sum"`, `"mean"`, `"weighted_mean"` or
        `"sum_by_nonzero_weights"`.
      chunk_size: tokens per chunk of the `"chunked"` implementation (None:
        on CPU about 2²⁴ logits, 2²² for half-precision inputs, and at most
        1/16 of the tokens per chunk, at least 8 tokens, preferably a multiple
        of 8 that divides the tokens; on GPU and TPU 1/16 of the tokens,
        a multiple of 8; see the Performance page).
        Ignored by `"xla"`.
      implementation: `"chunked"` (the default for None) or `"xla"` (the
        unfused `x @ w` then the softmax loss, for reference).

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
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.linear_softmax_cross_entropy(x, w, labels, chunk_size=1))
      [0.5514 0.2395]
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.linear_softmax_cross_entropy(x, w, labels, reduction="mean"))
      0.3955

    Notes:
      For scalar reductions the `"chunked"` derivative is a `jax.custom_jvp`
      whose rule forms the gradients of `x`, `w`, `bias`, `weights`,
      `class_weights` and the per-class and scalar hyperparameters in the
      same sweep that makes each chunk's logits (three matmuls); reverse mode
      only scales them. With `reduction="none"` the logits are recomputed in
      the backward pass instead (four matmuls). Forward and reverse mode,
      `vmap` and `jax.hessian` all work. Under `jit` with `x` sharded over
      tokens or `w` over the vocabulary, no device gathers the logits; see
      the Scaling page of the docs.

    References:
      Wijmans et al., *Cut Your Losses in Large-Vocabulary Language Models*,
      ICLR 2025. Hsu et al., *Liger Kernel: Efficient Triton Kernels for LLM
      Training*, 2024. Gemma Team, *Gemma 2: Improving Open Language Models at
      a Practical Size*, 2024 (logit soft-capping).
    """
    x, w, labels = jnp.asarray(x), jnp.asarray(w), jnp.asarray(labels)
    bias = None if bias is None else jnp.asarray(bias)
    _check_inputs(x, w, labels, bias)
    Options(label_smoothing=label_smoothing, z_loss=z_loss, reduction=reduction)
    _check_fused_options(logit_soft_cap, chunk_size, implementation)
    if implementation == "xla":
        if where is not None:
            _checks.check_broadcastable(jnp.asarray(where), labels.shape, "where")
        return _unfused_loss(
            x,
            w,
            labels,
            bias,
            logit_soft_cap,
            where=where,
            weights=weights,
            class_weights=class_weights,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            logit_adjustment=logit_adjustment,
            label_margins=label_margins,
            reduction=reduction,
        )
    dtype = compute_dtype(x.dtype)
    batch_shape, vocab = tuple(labels.shape), w.shape[1]
    targets = prepare_integer_labels(
        labels,
        batch_shape=batch_shape,
        num_classes=vocab,
        dtype=dtype,
        row_mask=_reduction.example_mask(batch_shape, where=where),
        class_weights=class_weights,
        ignore_index=ignore_index,
    )
    shared = Shared(
        w=w,
        bias=bias,
        class_weights=targets.class_weights,
        offsets=class_vector(logit_adjustment, vocab, dtype, "logit_adjustment"),
        margins=class_vector(label_margins, vocab, dtype, "label_margins"),
        label_smoothing=_optional(label_smoothing, dtype),
        z_loss=_optional(z_loss, dtype),
        soft_cap=None if logit_soft_cap is None else hyperparameter(logit_soft_cap, dtype),
    )
    rows = x.reshape(-1, x.shape[-1])
    if targets.mask is not None:
        # Masked rows become zeros, so nothing non-finite in them reaches the gradient.
        rows = jnp.where(targets.mask.reshape(-1, 1), rows, jnp.zeros_like(rows))
    plans = Plans(
        cpu=make_plan(rows.shape[0], vocab, chunk_size, x.dtype),
        default=accelerator_plan(rows.shape[0], chunk_size, gpu_chunks(rows.shape[0])),
        tpu=accelerator_plan(rows.shape[0], chunk_size, tpu_chunks(rows.shape[0], x.dtype)),
    )
    coefficients = _reduction.coefficients(
        reduction,
        batch_shape,
        dtype,
        weights=weights,
        mask=targets.mask,
        label_weight=targets.label_weight,
    )
    flat = Rows(
        rows, targets.labels.reshape(-1), targets.valid.reshape(-1), coefficients.reshape(-1)
    )
    flat, shared = on_the_mesh_of_x(flat, shared)
    if reduction == "none":
        loss = per_token(plans.cpu, flat, shared).reshape(batch_shape)
        return _reduction.finish(
            loss, reduction, weights=weights, mask=targets.mask, label_weight=targets.label_weight
        )
    return weighted_sum(plans, flat, shared)
