"""Backend-specific code paths, chosen when the program is lowered.

jwxent's losses are written once for every backend. A few passes have a
faster form on one compiler only (the XLA:CPU workarounds of
`_softmax/_xla_cpu.py`, each with the measurement that justifies it).
`by_platform(*args, cpu=f, default=g)` computes `f(*args)` in a program
lowered for XLA:CPU and `g(*args)` in any other: the CUDA and TPU programs
contain only the generic form, with no `case`, no `if` and no optimisation
barrier, and the CPU program only its own. `f` and `g` must compute the same
function.

It is a small JAX primitive (`lax.platform_dependent` would do the same but
leaves constant-index `case` ops in the lowered program):

* lowering: the form for the platform being lowered; a multi-platform
  lowering (`jax.export`) falls back to `lax.platform_dependent`;
* abstract evaluation: the generic form's output types (shapes, dtypes,
  shardings), varying over the mesh axes its inputs vary over;
* eager evaluation: the form of the default backend;
* `vmap`: the primitive again, over the vmapped forms;
* forward mode: the generic form's JVP (the derivative rules of the losses
  never differentiate these passes; `separate`, an identity, is the only
  one reached by higher-order derivatives).

`generic_only()` makes every call take the generic form while it is active,
so that the tests run the GPU/TPU path on CPU. It acts at trace time: trace
(`jax.jit` a fresh function) inside it.
"""

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

_state = threading.local()


@contextlib.contextmanager
def generic_only() -> Iterator[None]:
    """Within this context, `by_platform` traces only the generic path."""
    previous = getattr(_state, "generic_only", False)
    _state.generic_only = True
    try:
        yield
    finally:
        _state.generic_only = previous


def generic_active() -> bool:
    """Whether `generic_only()` is active (a static argument of cached traces)."""
    return getattr(_state, "generic_only", False)


def by_platform(*args: Any, cpu: Callable[..., Any], default: Callable[..., Any]) -> Any:
    """`cpu(*args)` when lowered for XLA:CPU, `default(*args)` everywhere else.

    `args` and the results may be pytrees (with None leaves).
    """
    if generic_active():
        return default(*args)
    flat, tree = jax.tree.flatten(args)
    cpu_form, default_form = _Flat(cpu, tree), _Flat(default, tree)
    outs = _per_platform_p.bind(*flat, cpu=cpu_form, default=default_form)
    out_tree = default_form.out_tree
    if out_tree is None:  # the output types came from a cache: trace for the structure
        out_tree = jax.tree.structure(jax.eval_shape(default, *args))
    return jax.tree.unflatten(out_tree, outs)


def end_row_reductions(values: Any) -> Any:
    """`values`, per-row results of reductions over the classes, unchanged.

    On XLA:CPU each array goes through `row_result`; the generic form is the
    identity.
    """
    return by_platform(values, cpu=_row_results, default=_identity)


def row_result(x: Any) -> Any:
    """`x`, the result of a row reduction, through a select that XLA cannot fold.

    (`x == x` is False only for NaN.) XLA:CPU's library row reduction runs
    several times slower with any consumer fused after it: the per-row
    arithmetic of a loss, a log, a later sum over the batch (a class-weighted
    `Σ_k q_k z_k` at 65536 × 1000 bf16: 40 ms as the fusion's result, 270 ms
    with `lse·Σq − ·` fused after it, 280 ms summed over the batch). A select
    is not taken into the library fusion, so the reduction stays its result.
    For XLA:CPU programs only (see `end_row_reductions`).
    """
    return jnp.where(x == x, x, jnp.nan)


def _row_results(values: Any) -> Any:
    return jax.tree.map(row_result, values)


def _identity(values: Any) -> Any:
    return values


class _Flat:
    """A function of pytrees as a function of flat lists, hashable by what it wraps."""

    def __init__(self, fn: Callable[..., Any], in_tree: Any):
        self.fn, self.in_tree = fn, in_tree
        self.out_tree: Any = None

    def __call__(self, *flat: Any) -> list[Any]:
        out = self.fn(*jax.tree.unflatten(self.in_tree, flat))
        leaves, self.out_tree = jax.tree.flatten(out)
        return leaves

    def __hash__(self) -> int:
        return hash((self.fn, self.in_tree))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Flat) and self.fn == other.fn and self.in_tree == other.in_tree


_per_platform_p = Primitive("jwxent_per_platform")
_per_platform_p.multiple_results = True


@_per_platform_p.def_abstract_eval
def _abstract_eval(*avals, cpu, default):
    del cpu
    outs = jax.make_jaxpr(default)(*avals).out_avals
    # Inside `shard_map`, the outputs vary over the mesh axes the inputs vary
    # over (tracing the form anew does not carry that part of the types).
    manual = [a.manual_axis_type for a in avals if getattr(a, "manual_axis_type", None)]
    if not manual:
        return outs
    widest = max(manual, key=lambda m: len(m.varying))
    return [out.update(manual_axis_type=widest) for out in outs]


@_per_platform_p.def_impl
def _impl(*args, cpu, default):
    return (cpu if jax.default_backend() == "cpu" else default)(*args)


def _lowering(ctx, *args, cpu, default):
    platforms = set(ctx.module_context.platforms)
    if platforms == {"cpu"}:
        form = cpu
    elif "cpu" not in platforms:
        form = default
    else:
        form = lambda *a: lax.platform_dependent(*a, cpu=cpu, default=default)
    return mlir.lower_fun(form, multiple_results=True)(ctx, *args)


mlir.register_lowering(_per_platform_p, _lowering)


def _batch(args, dims, *, cpu, default):
    in_axes = tuple(d if isinstance(d, int) else None for d in dims)
    tree = jax.tree.structure(tuple(args))

    def vmapped(form: _Flat) -> _Flat:
        return _Flat(lambda *a: jax.vmap(form, in_axes=in_axes)(*a), tree)

    outs = _per_platform_p.bind(*args, cpu=vmapped(cpu), default=vmapped(default))
    return outs, [0] * len(outs)


batching.primitive_batchers[_per_platform_p] = _batch


def _jvp(primals, tangents, *, cpu, default):
    outs = _per_platform_p.bind(*primals, cpu=cpu, default=default)
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    return outs, jax.jvp(default, tuple(primals), tuple(tangents))[1]


ad.primitive_jvps[_per_platform_p] = _jvp
