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

A class that has been seen and then stops appearing is held at a floor,
`min_frequency`, on its estimated frequency: its EMA cannot decay to 0 (or
underflow), so its weight stays finite and bounded when it comes back.
"""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jwxent import _checks, _class_weights, _reduction
from jwxent._typing import Array, ArrayLike

RELATIVE_MIN_FREQUENCY = 0.01
"""The default floor on a seen class's frequency, as a fraction of the uniform $1/C$."""


class ClassBalanceState(NamedTuple):
    r"""The state of the online class-balance estimator (a pytree).

    Attributes:
      ema: `[num_classes]` float32, the EMA of the per-batch class frequencies.
        It starts at 0 and is biased towards 0 for the first updates. It stays
        exactly 0 for a class never seen; for a class seen at least once it is
        held at or above $f_{\min}\cdot\text{bias\_correction}$ (see
        `class_balance_update`), so it never underflows.
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
    min_frequency: float | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    axis_name: _class_weights.AxisName | None = None,
) -> ClassBalanceState:
    r"""Folds one batch of labels into the class-frequency EMA.

    With $f_t = n_t / \sum_c n_{t,c}$ the class frequencies of the batch
    (`class_counts` with the same `where`, `weights`, `ignore_index`),
    $d$ the decay and $b_t$ the bias correction:

    $$
    b_t = d\,b_{t-1} + (1-d),
    \qquad
    \text{ema}_{t,c} = \begin{cases}
      \max\bigl(d\,\text{ema}_{t-1,c} + (1-d)\,f_{t,c},\; f_{\min}\,b_t\bigr)
        & \text{class } c \text{ seen in some batch so far,} \\
      0 & \text{class } c \text{ never seen.}
    \end{cases}
    $$

    The floor keeps the bias-corrected frequency
    $\hat f_c = \text{ema}_c / b$ of every class seen so far at
    $\hat f_c \ge f_{\min}$ (`min_frequency`). Without it, the frequency of a
    class that stops appearing decays like $d^{\,t}$, its inverse-frequency
    weight grows like $d^{-t}$ (a factor of $4 \cdot 10^{43}$ over 10 000
    batches at $d = 0.99$), and eventually the EMA underflows to 0 and the
    weight with it. With the floor, the class keeps the weight of a class of
    frequency $f_{\min}$ (see `class_balance_weights` for the resulting cap),
    its EMA never falls below $f_{\min}(1-d)$, and once the class is back the
    floor's extra mass decays like $d^{\,t}$, so the estimate converges to the
    true frequencies again. A class never seen keeps frequency (and weight)
    0: there is nothing of it to weight.

    Each batch counts once, whatever its size. A batch with no example left
    after masking carries no frequency information and leaves the state
    unchanged (`num_updates` is not incremented).

    **Data parallelism.** The batch is the global batch: under `jax.jit` with
    the labels sharded over devices or processes (`Auto` or `Explicit` mesh
    axes) the counts are summed across them, so every device and process
    folds in the same frequencies and holds the same state. Inside
    `jax.shard_map` or `jax.pmap`, pass the mapped batch axis as `axis_name`
    for the same effect; without it each shard would update its own estimate
    from its own examples.

    Args:
      state: the current `ClassBalanceState`.
      labels: integer labels `[*batch]` or probabilities
        `[*batch, num_classes]`, as in `class_counts`.
      decay: $d \in [0, 1)$, a Python float; the EMA averages over about
        $1/(1-d)$ batches.
      min_frequency: $f_{\min} \in (0, 1/C]$, a Python float: the smallest
        frequency the estimate gives a class that has been seen. None (the
        default) means $f_{\min} = 0.01 / C$, a hundredth of the uniform
        frequency, so that with the default weights a vanished class weighs
        at most about 100 times an average example once every class has been
        seen. The floor acts at each update: a new value takes effect from the
        next one.
      where: bool mask broadcastable to the batch shape, as in `class_counts`.
      weights: per-example multiplier, as in `class_counts`.
      ignore_index: integer labels equal to it are not counted.
      axis_name: inside `shard_map` or `pmap`, the mapped axis (or axes) the
        batch is split over, as in `class_counts`: the counts are summed over
        it, so every shard gets the same state.

    Returns:
      The new `ClassBalanceState`.

    Raises:
      TypeError: as `class_counts` for the labels; `decay` or `min_frequency`
        not a Python float.
      ValueError: as `class_counts` for the labels; `decay` outside [0, 1);
        `min_frequency` outside $(0, 1/C]$.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> state = jwxent.class_balance_init(3)
      >>> state = jwxent.class_balance_update(state, jnp.array([0, 0, 1, 2]), decay=0.9)
      >>> print(state.ema, state.num_updates)
      [0.05  0.025 0.025] 1

      A class that vanishes is held at the floor, here $f_{\min} = 0.01/2$:

      >>> state = jwxent.class_balance_init(2)
      >>> state = jwxent.class_balance_update(state, jnp.array([0, 1]), decay=0.5)
      >>> for _ in range(20):  # class 1 is gone for 20 batches
      ...     state = jwxent.class_balance_update(state, jnp.array([0, 0]), decay=0.5)
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.class_balance_frequencies(state))
      [1.    0.005]
    """
    _checks.check_unit_interval(decay, "decay")
    num_classes = state.ema.shape[0]
    floor = _min_frequency(min_frequency, num_classes)
    counts = _class_weights.class_counts(
        labels,
        num_classes,
        where=where,
        weights=weights,
        ignore_index=ignore_index,
        axis_name=axis_name,
    )
    counts = counts.astype(state.ema.dtype)
    total = jnp.sum(counts)
    frequencies = _reduction.safe_divide(counts, total)
    nonempty = total > 0
    correction = decay * state.bias_correction + (1.0 - decay)
    ema = decay * state.ema + (1.0 - decay) * frequencies
    # A class seen before has ema > 0 (the floor keeps it positive); one seen
    # now has a positive count. Only those are held at the floor.
    seen = (state.ema > 0) | (counts > 0)
    ema = jnp.where(seen, jnp.maximum(ema, floor * correction), ema)
    return ClassBalanceState(
        ema=jnp.where(nonempty, ema, state.ema),
        bias_correction=jnp.where(nonempty, correction, state.bias_correction),
        num_updates=state.num_updates + nonempty.astype(jnp.int32),
    )


def _min_frequency(min_frequency: float | None, num_classes: int) -> float:
    """The floor $f_{\\min}$: the default $0.01/C$, or a validated Python float in (0, 1/C]."""
    if min_frequency is None:
        return RELATIVE_MIN_FREQUENCY / num_classes
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int | float | np.floating):
        raise TypeError(
            f"`min_frequency` must be a Python float in (0, 1/num_classes]; "
            f"got {type(min_frequency).__name__}."
        )
    if not 0.0 < min_frequency <= 1.0 / num_classes:
        raise ValueError(
            f"`min_frequency` must be in (0, 1/num_classes] = (0, {1.0 / num_classes:g}] "
            f"(num_classes={num_classes}); got {min_frequency}."
        )
    return float(min_frequency)


def class_balance_frequencies(state: ClassBalanceState) -> Array:
    r"""The bias-corrected class frequencies: `ema / bias_correction`.

    $$
    \hat f = \frac{\text{ema}_t}{\text{bias\_correction}_t}
    = \frac{\sum_{s \le t} (1-d)\,d^{\,t-s} f_s}{1 - d^{\,t}},
    $$

    a weighted average of the batch frequencies whose weights sum to 1, so
    $\sum_c \hat f_c = 1$ and after one update $\hat f = f_1$ exactly (up to
    rounding). Before the first update every class has frequency $1/C$.

    A class seen before never drops below the floor $f_{\min}$ of
    `class_balance_update`; while one is held there, the frequencies sum to a
    little more than 1 (at most $1 + C_+ f_{\min}$, with $C_+$ the number of
    classes seen), and each exceeds the formula above by at most $f_{\min}$.
    A class never seen has frequency 0.

    Args:
      state: a `ClassBalanceState`.

    Returns:
      `[num_classes]` float32 frequencies that sum to 1 (or slightly more
      while a class is held at the floor).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> state = jwxent.class_balance_init(3)
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.class_balance_frequencies(state))
      [0.3333 0.3333 0.3333]
      >>> state = jwxent.class_balance_update(state, jnp.array([0, 0, 1, 2]), decay=0.9)
      >>> print(jwxent.class_balance_frequencies(state))
      [0.5  0.25 0.25]
      >>> state = jwxent.class_balance_update(state, jnp.array([1, 1, 1, 1]), decay=0.9)
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.class_balance_frequencies(state))
      [0.2368 0.6447 0.1184]

      After the second update the batches have weights 0.09 and 0.1 out of
      $1 - 0.9^2 = 0.19$: $\hat f_0 = 0.09 \cdot 0.5 / 0.19 = 0.2368$.
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
    `"inverse"` gives $1/(C_+\,\hat f_c)$ times $\sum_k \hat f_k$ (which is 1
    unless a class is held at the floor), scikit-learn's `"balanced"`.

    **The cap.** Every class seen so far has $\hat f_c \ge f_{\min}$, the floor
    of `class_balance_update` (default $0.01/C$), and
    $\sum_c \hat f_c \le 1 + C_+ f_{\min}$, with $C_+$ the number of classes
    seen. Every method is non-increasing in the count, so no class weighs
    more than a class of frequency $f_{\min}$ would, and the weights are
    bounded whatever happens to the data. For the default `"inverse"`:

    | `normalize` | cap on every weight |
    | --- | --- |
    | `"mean_one"` (default) | $1 + 1/(C_+ f_{\min})$, i.e. $1 + 100\,C/C_+$ by default |
    | None | $1/(f_{\min}\cdot\text{num\_examples})$ |
    | `"sum_to_one"` | 1 |
    | `"sum_to_num_classes"` | $C_+$ |

    The floor acts on the frequencies, before the weights are normalised,
    rather than as a clip on the weights: a clip after the normalisation
    would leave the normaliser dominated by the vanished class (under
    `"sum_to_one"` every other weight would collapse towards 0) and break
    `"mean_one"`, and a clip before it is no bound after it.

    Args:
      state: a `ClassBalanceState`.
      method: as in `class_weights_from_counts`.
      normalize: as in `class_weights_from_counts`; the default `"mean_one"`
        keeps the average weight of an example at 1.
      beta: $\beta$ of `"effective_number"`, as in `class_weights_from_counts`.
      num_examples: positive scalar that turns frequencies into counts;
        required for `"effective_number"`.

    Returns:
      `[num_classes]` float32 class weights, finite and bounded by the cap
      above; 0 exactly for a class never seen; positive for a class seen and
      then gone.

    Raises:
      ValueError: `method="effective_number"` without `num_examples`, and
        anything `class_weights_from_counts` raises.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jwxent
      >>> state = jwxent.class_balance_init(3)
      >>> state = jwxent.class_balance_update(state, jnp.array([0, 0, 1, 2]), decay=0.9)
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.class_balance_weights(state))
      [0.6667 1.3333 1.3333]

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
      >>> print(f"{loss:.4f}")
      0.6931

      With frequencies $(3/4, 1/4)$ the weights are $(2/3, 2)$ and the mean
      weighted loss is $(3 \cdot 2/3 + 2)\log 2 / 4 = \log 2$.

      A class that vanished is held at $f_{\min} = 0.01/2$, so its weight is
      $\sum_k \hat f_k / (2 f_{\min}) = 1.005/0.01$, under the cap 101:

      >>> state = jwxent.class_balance_update(
      ...     jwxent.class_balance_init(2), jnp.array([0, 1]), decay=0.5)
      >>> for _ in range(20):
      ...     state = jwxent.class_balance_update(state, jnp.array([0, 0]), decay=0.5)
      >>> with jnp.printoptions(precision=4):
      ...     print(jwxent.class_balance_weights(state))
      [  0.5025 100.5   ]
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
