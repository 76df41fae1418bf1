"""The one harness of jwxent's hand-written derivative rules.

Every loss core is a pure function `forward(static, inputs) -> outputs` with
a *tangent map* `tangents(static, inputs, outputs, d_inputs) -> d_outputs`,
linear in `d_inputs`. `with_tangent_map` makes the pair a `jax.custom_jvp`:

* forward mode (`jvp`, `jacfwd`, `linearize`) evaluates the tangent map;
  reverse mode transposes it, which JAX does for any linear map, into the
  fused backward pass; higher orders differentiate it again;
* `static` is hashable and never differentiated: the flags of a core and the
  Python-number hyperparameters (a Python `gamma` takes `integer_pow`; an
  array `gamma` is an input, with a tangent). `split_static` in
  `_numerics.py` makes that split for every loss alike;
* the tangent map sees `None` for an input without a tangent (JAX's symbolic
  zeros) and may return `None` for an output whose tangent is zero; it is not
  called at all when no input has a tangent;
* it runs under `jax.checkpoint` with nothing saveable, so reverse mode keeps
  as residuals only the inputs and the outputs, and recomputes anything
  logits-shaped (the softmax, the sigmoid) inside the backward pass.
"""

from collections.abc import Callable
from typing import Any, TypeVar

import jax
from jax.custom_derivatives import SymbolicZero

Outputs = TypeVar("Outputs")


def with_tangent_map(
    forward: Callable[[Any, Any], Outputs],
    tangents: Callable[[Any, Any, Outputs, Any], Any],
) -> Callable[[Any, Any], Outputs]:
    """`forward(static, inputs)` as a `jax.custom_jvp` whose JVP is `tangents`.

    Args:
      forward: `(static, inputs) -> outputs`, a pytree of arrays.
      tangents: `(static, inputs, outputs, d_inputs) -> d_outputs`, linear in
        `d_inputs` (whose absent tangents are None), with the structure of
        `outputs` and None where a tangent is zero.

    Returns:
      `core(static, inputs)`, differentiable in every mode with respect to
      `inputs`.
    """
    core = jax.custom_jvp(forward, nondiff_argnums=(0,))
    remat = recomputed(tangents, static_argnums=(0,))

    def jvp(static, primals, d_primals):
        (inputs,), (d_inputs,) = primals, d_primals
        outputs = core(static, inputs)
        d_inputs = jax.tree.map(_none_if_zero, d_inputs, is_leaf=_is_zero)
        if all(d is None for d in jax.tree.leaves(d_inputs, is_leaf=_is_none)):
            return outputs, jax.tree.map(_symbolic_zero, outputs)
        d_outputs = remat(static, inputs, outputs, d_inputs)
        return outputs, jax.tree.map(_zero_if_none, d_outputs, outputs, is_leaf=_is_none)

    core.defjvp(jvp, symbolic_zeros=True)
    return core


def recomputed(fn: Callable[..., Any], static_argnums: tuple[int, ...] = ()) -> Callable[..., Any]:
    """`fn` under `jax.checkpoint` with nothing saveable: reverse mode keeps its
    inputs only and recomputes everything else inside the backward pass."""
    return jax.checkpoint(
        fn,
        prevent_cse=False,
        policy=jax.checkpoint_policies.nothing_saveable,
        static_argnums=static_argnums,
    )


def _is_none(x: object) -> bool:
    return x is None


def _is_zero(x: object) -> bool:
    return x is None or isinstance(x, SymbolicZero)


def _none_if_zero(x: Any) -> Any:
    return None if _is_zero(x) else x


def _symbolic_zero(x: Any) -> SymbolicZero:
    return SymbolicZero(jax.typeof(x))


def _zero_if_none(d: Any, x: Any) -> Any:
    return _symbolic_zero(x) if d is None else d
