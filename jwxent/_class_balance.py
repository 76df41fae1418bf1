"""An online class-balance estimator in optax's `init` / `update` style.

A train step that sees the data one batch at a time can keep an exponential
moving average (EMA) of the class frequencies in a small state and weight its
loss with weights derived from it, all inside `jit`:

```python
state = class_balance_init(num_classes)
...
state = class_balance_update(state, labels)                # in the train step
class_weights = class_balance_weights(state)               # [num_classes]
```
"""

from typing import NamedTuple

import jax.numpy as jnp

from jwxent import _checks, _class_weights, _reduction
from jwxent._typing import Array, ArrayLike


class ClassBalanceState(NamedTuple):
    r"""The state of the online class-balance estimator (a pytree).

    Attributes:
      ema: `[num_classes]` float32, the EMA of the per-batch class frequencies.
        It starts at 0 and is biased towards 0 for the first updates.
      bias_correction: float32 scalar, the same EMA of the constant 1, that is
        $1 - \prod_t \text{decay}_t$ (Adam's $1 - \text{decay}^t$ for a
        constant decay); `ema / bias_correction` is unbiased. Keeping it in
        the state makes the correction exact even when `decay` changes.
      num_updates: int32 scalar, the number of updates that saw at least one example.
    """

    ema: Array
    bias_correction: Array
    num_updates: Array


def class_balance_init(num_classes: int) -> ClassBalanceState:
    """A fresh class-balance state: no batch seen yet.

    Args:
      num_classes: number of classes $C$, a Python int.

    Returns:
      A `ClassBalanceState` with zero EMA, zero bias correction and no update.
      Before the first update `class_balance_frequencies` is uniform.

    Raises:
      TypeError: `num_classes` is not a Python int.
      ValueError: `num_classes < 1`.

    Examples:
      >>> import jwxent
      >>> state = jwxent.class_balance_init(3)
      >>> print(state.ema, state.num_updates)
      [0. 0. 0.] 0
    """
    _checks.check_num_classes(num_classes)
    return ClassBalanceState(
        ema=jnp.zeros((num_classes,), jnp.float32),
        bias_correction=jnp.zeros((), jnp.float32),
        num_updates=jnp.zeros((), jnp.int32),
    )


def class_balance_update(
    state: ClassBalanceState,
    labels: ArrayLike,
    *,
    decay: float = 0.99,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    ignore_index: int | None = None,
) -> ClassBalanceState:
    r"""Folds one batch of labels into the class-frequency EMA.

    With $f_t = n_t / \sum_c n_{t,c}$ the class frequencies of the batch
    (`class_counts` with the same `where`, `weights`, `ignore_index`) and
    $d$ the decay:

    $$
    \text{ema}_t = d\,\text{ema}_{t-1} + (1-d)\,f_t,
    \qquad
    \text{bias\_correction}_t = d\,\text{bias\_correction}_{t-1} + (1-d).
    $$

    Each batch counts once, whatever its size. A batch with no example left
    after masking carries no frequency information and leaves the state
    unchanged (`num_updates` is not incremented).

    Args:
      state: the current `ClassBalanceState`.
      labels: integer labels `[*batch]` or probabilities
        `[*batch, num_classes]`, as in `class_counts`.
      decay: $d \in [0, 1)$, a Python float; the EMA averages over about
        $1/(1-d)$ batches.
      where: bool mask broadcastable to the batch shape, as in `class_counts`.
      weights: per-example multiplier, as in `class_counts`.
      ignore_index: integer labels equal to it are not counted.

    Returns:
      The new `ClassBalanceState`.

    Raises:
      TypeError: as `class_counts` for the labels; `decay` not a Python float.
      ValueError: as `class_counts` for the labels; `decay` outside [0, 1).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> state = jwxent.class_balance_init(3)
      >>> state = jwxent.class_balance_update(state, jnp.array([0, 0, 1, 2]), decay=0.9)
      >>> print(state.ema, state.num_updates)
      [0.05  0.025 0.025] 1
    """
    _checks.check_unit_interval(decay, "decay")
    num_classes = state.ema.shape[0]
    counts = _class_weights.class_counts(
        labels, num_classes, where=where, weights=weights, ignore_index=ignore_index
    )
    counts = counts.astype(state.ema.dtype)
    total = jnp.sum(counts)
    frequencies = _reduction.safe_divide(counts, total)
    seen = total > 0
    ema = jnp.where(seen, decay * state.ema + (1.0 - decay) * frequencies, state.ema)
    correction = state.bias_correction
    correction = jnp.where(seen, decay * correction + (1.0 - decay), correction)
    return ClassBalanceState(ema, correction, state.num_updates + seen.astype(jnp.int32))


def class_balance_frequencies(state: ClassBalanceState) -> Array:
    r"""The bias-corrected class frequencies: `ema / bias_correction`.

    $$
    \hat f = \frac{\text{ema}_t}{\text{bias\_correction}_t}
    = \frac{\sum_{s \le t} (1-d)\,d^{\,t-s} f_s}{1 - d^{\,t}},
    $$

    a weighted average of the batch frequencies whose weights sum to 1, so
    $\sum_c \hat f_c = 1$ and after one update $\hat f = f_1$ exactly (up to
    rounding). Before the first update every class has frequency $1/C$.

    Args:
      state: a `ClassBalanceState`.

    Returns:
      `[num_classes]` float32 frequencies that sum to 1.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> state = jwxent.class_balance_init(3)
      >>> print(jwxent.class_balance_frequencies(state))
      [0.33333 0.33333 0.33333]
      >>> state = jwxent.class_balance_update(state, jnp.array([0, 0, 1, 2]), decay=0.9)
      >>> print(jwxent.class_balance_frequencies(state))
      [0.5  0.25 0.25]
      >>> state = jwxent.class_balance_update(state, jnp.array([1, 1, 1, 1]), decay=0.9)
      >>> print(jwxent.class_balance_frequencies(state))
      [0.23684 0.64474 0.11842]

      After the second update the batches have weights 0.09 and 0.1 out of
      $1 - 0.9^2 = 0.19$: $\hat f_0 = 0.09 \cdot 0.5 / 0.19 = 0.23684$.
    """
    num_classes = state.ema.shape[0]
    uniform = jnp.full_like(state.ema, 1.0 / num_classes)
    corrected = _reduction.safe_divide(state.ema, state.bias_correction)
    return jnp.where(state.num_updates > 0, corrected, uniform)


def class_balance_weights(
    state: ClassBalanceState,
    *,
    method: _class_weights.WeightMethod = "inverse",
    normalize: _class_weights.Normalization | None = "mean_one",
    beta: float = 0.999,
    num_examples: ArrayLike | None = None,
) -> Array:
    r"""Class weights from the estimated frequencies: `class_weights_from_counts`.

    The state holds frequencies, not counts: an EMA forgets, so there is no
    absolute number of examples behind it. The counts passed on are
    $n_c = \hat f_c \cdot \text{num\_examples}$. Every method but
    `"effective_number"` depends only on the ratios of the counts once
    normalised (and without `normalize`, `num_examples` only rescales
    `"inverse"` and `"inverse_sqrt"`), so `num_examples` defaults to 1 there.
    The effective number $(1-\beta^{n})/(1-\beta)$ depends on the absolute
    count compared with $1/(1-\beta)$, so `"effective_number"` needs
    `num_examples`: the number of examples the frequencies stand for, usually
    the size of the training set, as in Cui et al.

    The default `normalize="mean_one"` keeps the average weight of an example
    at 1, so the weighted loss has the unweighted loss's scale; with it,
    `"inverse"` gives $1/(C_+\,\hat f_c)$, scikit-learn's `"balanced"`.

    Args:
      state: a `ClassBalanceState`.
      method: as in `class_weights_from_counts`.
      normalize: as in `class_weights_from_counts`; the default `"mean_one"`
        keeps the average weight of an example at 1.
      beta: $\beta$ of `"effective_number"`, as in `class_weights_from_counts`.
      num_examples: positive scalar that turns frequencies into counts;
        required for `"effective_number"`.

    Returns:
      `[num_classes]` float32 class weights; 0 for a class whose estimated
      frequency is 0 (never seen, or unseen for so long that its EMA
      underflowed).

    Raises:
      ValueError: `method="effective_number"` without `num_examples`, and
        anything `class_weights_from_counts` raises.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> state = jwxent.class_balance_init(3)
      >>> state = jwxent.class_balance_update(state, jnp.array([0, 0, 1, 2]), decay=0.9)
      >>> print(jwxent.class_balance_weights(state))
      [0.66667 1.33333 1.33333]

      The frequencies are $(0.5, 0.25, 0.25)$, so the weights are
      $1/(3 \cdot 0.5)$ and $1/(3 \cdot 0.25)$. In a train step:

      >>> import jax
      >>> @jax.jit
      ... def weighted_loss(state, logits, labels):
      ...     state = jwxent.class_balance_update(state, labels)
      ...     class_weights = jwxent.class_balance_weights(state)
      ...     loss = jwxent.softmax_cross_entropy_with_integer_labels(
      ...         logits, labels, class_weights=class_weights, reduction="mean")
      ...     return loss, state
      >>> loss, state = weighted_loss(
      ...     jwxent.class_balance_init(2), jnp.zeros((4, 2)), jnp.array([0, 0, 0, 1]))
      >>> print(loss)
      0.69315

      With frequencies $(3/4, 1/4)$ the weights are $(2/3, 2)$ and the mean
      weighted loss is $(3 \cdot 2/3 + 2)\log 2 / 4 = \log 2$.
    """
    if method == "effective_number" and num_examples is None:
        raise ValueError(
            "`method='effective_number'` needs `num_examples` (e.g. the training set "
            "size): its weights depend on absolute counts, not only on frequencies."
        )
    frequencies = class_balance_frequencies(state)
    counts = frequencies
    if num_examples is not None:
        counts = frequencies * jnp.asarray(num_examples, frequencies.dtype)
    return _class_weights.class_weights_from_counts(
        counts, method=method, normalize=normalize, beta=beta
    )
