"""Long-tail tools: logit adjustment, LDAM margins, post-hoc adjustment, deferred re-weighting.

The losses take the per-class vectors these functions make:

```python
offsets = logit_adjustment_from_counts(counts)                 # [num_classes]
loss = softmax_cross_entropy_with_integer_labels(logits, labels, logit_adjustment=offsets)

margins = ldam_margins(counts)                                 # [num_classes]
loss = softmax_cross_entropy_with_integer_labels(s * logits, labels, label_margins=s * margins)
```

Every function here is pure and jittable. Counts may be integers
(`np.bincount`'s) or floats (weighted or soft counts, `class_counts`'s); a
class with count 0 always gets a finite value, with a finite gradient.
"""

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from jwxent import _checks
from jwxent._numerics import compute_dtype, expand_rank, hyperparameter, widest_float
from jwxent._typing import Array, ArrayLike

# ---------------------------------------------------------------------------
# Validation particular to this module.
# ---------------------------------------------------------------------------


def _checked_counts(counts: ArrayLike) -> Array:
    """`counts` as a non-empty `[num_classes]` array of non-negative counts."""
    counts = jnp.asarray(counts)
    _checks.check_real(counts, "counts")
    _checks.check_rank(counts, 1, "counts", "[num_classes]")
    if counts.shape[0] == 0:
        raise ValueError("`counts` must have at least one class; got shape (0,).")
    _checks.check_nonnegative_values(counts, "counts")
    return counts


def _check_scalar(value: object, name: str) -> None:
    """A real scalar >= 0 (Python number or array, traced or not; its value checked if known)."""
    _checks.check_hyperparameter(value, name)
    _checks.check_real(jnp.asarray(value), name)


def _check_step(value: object, name: str) -> None:
    """A Python int >= 0: it fixes the schedule at trace time."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be a Python int; got {type(value).__name__}.")
    if value < 0:
        raise ValueError(f"`{name}` must be >= 0; got {value}.")


# ---------------------------------------------------------------------------
# Logit adjustment.
# ---------------------------------------------------------------------------


def logit_adjustment_from_counts(counts: ArrayLike, *, tau: ArrayLike = 1.0) -> Array:
    r"""Per-class logit offsets $\tau\log\pi_k$ from class counts: logit adjustment.

    With $n_k$ the count of class $k$ and $N = \sum_k n_k$, the class prior is
    $\pi_k = n_k / N$ and the offsets are

    $$
    \delta_k = \tau \log \pi_k = \tau \log \frac{n_k}{N}.
    $$

    Passed as `logit_adjustment=` to a softmax loss, they give Menon et al.'s
    logit-adjusted loss $-\log \mathrm{softmax}(z + \tau\log\pi)_y$: a frequent
    class must win by more, a rare one by less, so the plain logits $z$ learn
    the balanced posterior and predict with them unchanged. $\tau = 1$ is Ren
    et al.'s balanced softmax; $\tau = 0$ is the plain loss. The offsets are
    defined up to a constant, which no softmax sees.

    A class with no example has $\pi_k = 0$ and $\log\pi_k = -\infty$, which
    would give it a `-inf` offset in training (it then leaves the softmax, so
    its logit is never pushed down) and an infinite boost at prediction time
    (`post_hoc_logit_adjustment` would predict it for every input). Instead,
    its prior is taken as **half the smallest prior of a class present**:

    $$
    \pi_k = \tfrac12 \min_{j:\,n_j > 0} \pi_j \qquad (n_k = 0).
    $$

    An absent class is rarer than every class seen, so it gets the most
    negative offset, but a bounded one: $\tau\log 2$ below the rarest class
    seen. The rule depends only on ratios of counts, so it is the same for
    integer, weighted or normalised counts (a fixed "half an example" would
    not be), and the present classes' offsets do not change when absent
    classes are appended. If every count is 0, the prior is uniform,
    $\pi_k = 1/C$.

    Args:
      counts: `[num_classes]` non-negative counts, e.g. from `class_counts`.
        Integer counts such as `np.bincount`'s are accepted and computed in
        float32.
      tau: $\tau \ge 0$, the strength of the adjustment; a Python number or a
        scalar array (a `jit` argument, a `vmap` sweep, a schedule).

    Returns:
      `[num_classes]` finite offsets, float32 (float64 for float64 counts),
      all $\le 0$; differentiable with respect to `counts` (the gradient is
      finite at zero counts too) and `tau`.

    Raises:
      TypeError: `counts` neither integer nor floating point; `tau` not a
        real number or real scalar array.
      ValueError: `counts` not 1-D or empty; `tau` not a scalar; in eager
        calls, a negative count or a negative `tau`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> counts = jnp.array([100, 10, 1, 0])
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.logit_adjustment_from_counts(counts))
      [-0.1044 -2.4069 -4.7095 -5.4027]
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.logit_adjustment_from_counts(counts, tau=0.5))
      [-0.0522 -1.2035 -2.3548 -2.7013]

      The balanced softmax: the offsets go inside the softmax of the loss only.

      >>> logits = jnp.array([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
      >>> labels = jnp.array([0, 2])
      >>> offsets = jwxent.logit_adjustment_from_counts(counts)
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.softmax_cross_entropy_with_integer_labels(
      ...         logits, labels, logit_adjustment=offsets))
      [0.0154 2.7697]

    References:
      Menon et al., *Long-tail learning via logit adjustment*, ICLR 2021.
      Ren et al., *Balanced Meta-Softmax for Long-Tailed Visual Recognition*,
      NeurIPS 2020.
    """
    counts = _checked_counts(counts)
    _check_scalar(tau, "tau")
    n = counts.astype(widest_float(counts.dtype))
    present = n > 0
    total = jnp.sum(n)
    any_present = total > 0
    # Double where: every log below sees a positive number, so that neither
    # the value nor the gradient of an absent class can be inf or NaN.
    one = jnp.ones_like(total)
    safe_total = jnp.where(any_present, total, one)
    safe_n = jnp.where(present, n, jnp.ones_like(n))
    smallest = jnp.min(jnp.where(present, n, jnp.max(n)))  # the smallest positive count
    safe_smallest = jnp.where(any_present, smallest, one)
    log_floor = jnp.log(safe_smallest) - jnp.log(safe_total) - np.log(2.0)
    log_prior = jnp.where(present, jnp.log(safe_n) - jnp.log(safe_total), log_floor)
    uniform = jnp.full_like(log_prior, -np.log(n.shape[0]))
    log_prior = jnp.where(any_present, log_prior, uniform)
    return hyperparameter(tau, n.dtype) * log_prior


def post_hoc_logit_adjustment(
    logits: ArrayLike, counts: ArrayLike, *, tau: ArrayLike = 1.0
) -> Array:
    r"""Logits adjusted for prediction after plain training: $z - \tau\log\pi$.

    Menon et al.'s post-hoc logit adjustment. A model trained with the plain
    (unweighted) cross-entropy on long-tailed data learns $p(y \mid x)$ under
    the training prior $\pi$; dividing it by $\pi^\tau$, that is subtracting
    $\tau\log\pi$ from the logits, moves its prediction towards the balanced
    posterior, without retraining:

    $$
    \hat y = \arg\max_k \bigl(z_k - \tau \log \pi_k\bigr).
    $$

    The offsets are `logit_adjustment_from_counts(counts, tau=tau)`, with its
    rule for absent classes (half the smallest prior of a class present): an
    absent class is boosted $\tau\log 2$ more than the rarest class seen,
    never infinitely. Use it on a model trained *without*
    `logit_adjustment`; a logit-adjusted model predicts with its plain logits.

    Args:
      logits: `[*batch, num_classes]` floating-point logits, class axis last.
      counts: `[num_classes]` non-negative training counts, integer or float.
      tau: $\tau \ge 0$; a Python number or a scalar array. Menon et al. tune
        it on held-out data; 1 is the Bayes-optimal choice for a calibrated
        model.

    Returns:
      `[*batch, num_classes]` adjusted logits in the logits' dtype (computed in
      float32 for half-precision logits); differentiable with respect to
      `logits`, `counts` and `tau`.

    Raises:
      TypeError: `logits` not floating point; `counts` neither integer nor
        floating point; `tau` not a real number or real scalar array.
      ValueError: `logits` a scalar; `counts` not of shape
        `[logits.shape[-1]]`; `tau` not a scalar; in eager calls, a negative
        count or a negative `tau`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> counts = jnp.array([90, 9, 1])
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [1.0, 0.0, 0.5]])
      >>> adjusted = jwxent.post_hoc_logit_adjustment(logits, counts)
      >>> with jnp.printoptions(precision=4):
      ...     print(adjusted)
      [[2.1054 2.9079 3.6052]
       [1.1054 2.4079 5.1052]]
      >>> print(jnp.argmax(logits, axis=-1), jnp.argmax(adjusted, axis=-1))
      [0 0] [2 2]

    References:
      Menon et al., *Long-tail learning via logit adjustment*, ICLR 2021
      (Section 4, post-hoc logit adjustment).
    """
    logits = jnp.asarray(logits)
    _checks.check_floating(logits, "logits")
    if logits.ndim == 0:
        raise ValueError("`logits` must have a class axis (the last); got a scalar.")
    counts = _checked_counts(counts)
    num_classes = logits.shape[-1]
    _checks.check_shape(counts, (num_classes,), "counts", "[num_classes], the logits' last axis")
    offsets = logit_adjustment_from_counts(counts, tau=tau)
    dtype = widest_float(compute_dtype(logits.dtype), offsets.dtype)
    adjusted = logits.astype(dtype) - expand_rank(offsets.astype(dtype), logits.ndim)
    return adjusted.astype(logits.dtype)


# ---------------------------------------------------------------------------
# LDAM margins and deferred re-weighting.
# ---------------------------------------------------------------------------


def ldam_margins(counts: ArrayLike, *, max_margin: ArrayLike = 0.5) -> Array:
    r"""Per-class LDAM margins $m_k \propto n_k^{-1/4}$, the largest equal to `max_margin`.

    Cao et al.'s label-distribution-aware margins: a rare class must beat the
    others by a larger margin, so that its decision boundary leaves it more
    room. With $n_k$ the counts and $M$ = `max_margin`,

    $$
    m_k = M \, \frac{n_k^{-1/4}}{\max_{j:\,n_j > 0} n_j^{-1/4}}
        = M \left(\frac{\min_{j:\,n_j>0} n_j}{n_k}\right)^{1/4},
    $$

    exactly the official LDAM-DRW code (`m_list = 1.0 /
    np.sqrt(np.sqrt(cls_num_list))`, then `m_list * (max_m / np.max(m_list))`),
    so the rarest class gets $M$. A class with no example would make
    $n_k^{-1/4}$ infinite and every other margin 0; instead it gets the
    largest margin $M$, and the maximum runs over the classes present, so
    appending absent classes changes no other margin. If every count is 0,
    every margin is $M$.

    LDAM applies the margin to *normalised* logits (cosines between the
    normalised feature and class weights, in $[-1, 1]$) and then scales them
    by $s$ (30 in the official code): the loss is
    $\mathrm{CE}\bigl(s\,(z - m_y\,e_y),\, y\bigr)$. With jwxent pass both
    scaled, `softmax_cross_entropy_with_integer_labels(s * z, y,
    label_margins=s * m)`. Cao et al. pair it with deferred re-weighting
    (`deferred_reweighting`): plain LDAM first, class-weighted LDAM later.

    Args:
      counts: `[num_classes]` non-negative counts, integer or float.
      max_margin: $M \ge 0$, the margin of the rarest class (`max_m`, 0.5 in
        the official code); a Python number or a scalar array.

    Returns:
      `[num_classes]` margins in $[0, M]$, float32 (float64 for float64
      counts), non-increasing in the count; differentiable with respect to
      `counts` (finite at zero counts) and `max_margin`.

    Raises:
      TypeError: `counts` neither integer nor floating point; `max_margin`
        not a real number or real scalar array.
      ValueError: `counts` not 1-D or empty; `max_margin` not a scalar; in
        eager calls, a negative count or a negative `max_margin`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> counts = jnp.array([625, 81, 16, 1, 0])
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.ldam_margins(counts))
      [0.1    0.1667 0.25   0.5    0.5   ]

      The LDAM loss with LDAM's scale $s = 30$, on normalised logits:

      >>> cosines = jnp.array([[0.3, 0.2, 0.0, -0.2, 0.0], [0.1, 0.0, 0.0, 0.3, -0.5]])
      >>> labels = jnp.array([0, 3])
      >>> s = 30.0
      >>> margins = jwxent.ldam_margins(counts)
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.softmax_cross_entropy_with_integer_labels(
      ...         s * cosines, labels, label_margins=s * margins))
      [0.6956 9.095 ]

    References:
      Cao et al., *Learning Imbalanced Datasets with Label-Distribution-Aware
      Margin Loss*, NeurIPS 2019; official code
      github.com/kaidic/LDAM-DRW (`losses.py`, `LDAMLoss`).
    """
    counts = _checked_counts(counts)
    _check_scalar(max_margin, "max_margin")
    n = counts.astype(widest_float(counts.dtype))
    present = n > 0
    any_present = jnp.any(present)
    # Double where: the fourth root sees a count of 1 for absent classes, so
    # neither their value nor their gradient is inf or NaN.
    safe_n = jnp.where(present, n, jnp.ones_like(n))
    raw = jnp.where(present, 1.0 / jnp.sqrt(jnp.sqrt(safe_n)), jnp.zeros_like(n))
    largest = jnp.max(raw)  # over the classes present: the others are 0
    safe_largest = jnp.where(any_present, largest, jnp.ones_like(largest))
    top = hyperparameter(max_margin, n.dtype)
    return jnp.where(present, raw * (top / safe_largest), jnp.broadcast_to(top, n.shape))


def deferred_reweighting(
    class_weights: ArrayLike, *, start_step: int
) -> Callable[[ArrayLike], Array]:
    r"""A schedule `step -> class weights`: all ones, then `class_weights` from `start_step` on.

    Cao et al.'s deferred re-weighting (DRW): train with the plain loss first,
    so that the features are learnt from the natural distribution, and switch
    the class weights on late (after 160 of 200 epochs in their CIFAR runs),
    when re-weighting mostly moves the decision boundaries. With $c$ the class
    weights and $t_0$ = `start_step`, the schedule is

    $$
    c(t) = \begin{cases} \mathbf 1 & t < t_0 \\ c & t \ge t_0 .\end{cases}
    $$

    Like an optax schedule, the result is a function of the step count that
    works on a traced step inside a jitted train step (it selects with
    `jnp.where`; nothing retraces when the weights switch on). Cao et al.
    take the weights from the effective number of samples,
    `class_weights_from_counts(counts, method="effective_number",
    beta=0.9999, normalize="sum_to_num_classes")`.

    Args:
      class_weights: `[num_classes]` floating-point weights used from
        `start_step` on.
      start_step: the first step $t_0 \ge 0$ with the class weights on; a
        Python int (0: always on).

    Returns:
      A function of `step` (an integer or float scalar, Python or array,
      traced or not) returning `[num_classes]` weights in the dtype of
      `class_weights`, differentiable with respect to `class_weights`.

    Raises:
      TypeError: `class_weights` not floating point; `start_step` not a
        Python int. The schedule raises `TypeError` for a non-numeric step.
      ValueError: `class_weights` not 1-D; `start_step < 0`. The schedule
        raises `ValueError` for a step that is not a scalar or, when
        concrete, is negative.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> weights = jnp.array([0.5, 1.0, 2.0])
      >>> schedule = jwxent.deferred_reweighting(weights, start_step=100)
      >>> print(schedule(99), schedule(100))
      [1. 1. 1.] [0.5 1.  2. ]
      >>> print(jax.jit(schedule)(jnp.array(150)))
      [0.5 1.  2. ]

    References:
      Cao et al., *Learning Imbalanced Datasets with Label-Distribution-Aware
      Margin Loss*, NeurIPS 2019 (Section 3.3, deferred re-weighting).
    """
    class_weights = jnp.asarray(class_weights)
    _checks.check_floating(class_weights, "class_weights")
    _checks.check_rank(class_weights, 1, "class_weights", "[num_classes]")
    _check_step(start_step, "start_step")
    start = int(start_step)

    def schedule(step: ArrayLike) -> Array:
        _check_scalar(step, "step")
        on = jnp.asarray(step) >= start
        return jnp.where(on, class_weights, jnp.ones_like(class_weights))

    return schedule
