"""Type aliases shared by the public signatures."""

from typing import Literal, get_args

import jax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

Reduction = Literal["none", "sum", "mean", "weighted_mean", "sum_by_nonzero_weights"]
"""How per-example losses are combined; see `docs/semantics.md`."""

REDUCTIONS: tuple[str, ...] = get_args(Reduction)

Axis = int | tuple[int, ...]
