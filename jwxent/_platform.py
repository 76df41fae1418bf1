"""Backend-specific code paths, chosen when the program is lowered.

jwxent's losses are written once for every backend. A few passes have a
faster form on one compiler only (the XLA:CPU workarounds of
`_softmax/_xla_cpu.py`, each with the measurement that justifies it).
`by_platform(*args, cpu=f, default=g)` computes `f(*args)` in a program
lowered for XLA:CPU and `g(*args)` in any other. `f` and `g` must compute the
same function, with the same output types. A third form, `tpu=`, is taken
for TPUs only where one differs (the fused loss's chunk count).

It is `jax.lax.platform_dependent`, public JAX API: every form is traced
into a `switch` on the platform, and lowering for one platform keeps only
that platform's branch, so the CUDA and TPU programs contain only their own
form, with no `case`, no `if` and none of the CPU form's optimisation
barriers, and the CPU program only its own. Being a `switch`, it composes
with every transformation (`vmap`, forward and reverse mode, `shard_map` with
its varying-axes checks) as `lax.switch` does. The price is trace time:
every form is traced.

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

_state = threading.local()


@contextlib.contextmanager
def generic_only(platform: str = "gpu") -> Iterator[None]:
    """Within this context, `by_platform` traces only the generic path.

    `platform="tpu"` takes the TPU form where a call has one.
    """
    previous = generic_active()
    _state.generic_only = platform
    try:
        yield
    finally:
        _state.generic_only = previous


def generic_active() -> str | None:
    """The platform of an active `generic_only()`, or None (a static argument of
    cached traces)."""
    return getattr(_state, "generic_only", None)


def by_platform(
    *args: Any,
    cpu: Callable[..., Any],
    default: Callable[..., Any],
    tpu: Callable[..., Any] | None = None,
) -> Any:
    """`cpu(*args)` when lowered for XLA:CPU, `tpu(*args)` for a TPU (if given),
    `default(*args)` everywhere else.

    `args` and the results may be pytrees (with None leaves).
    """
    active = generic_active()
    if active is not None:
        return tpu(*args) if active == "tpu" and tpu is not None else default(*args)
    # Inside `shard_map` the forms may vary over different mesh axes (an
    # optimisation barrier varies over every axis of its operands; a sum may
    # not), and a `switch` needs equal types: all vary over the inputs' axes.
    forms = {"cpu": cpu, "default": default} | ({} if tpu is None else {"tpu": tpu})
    forms = {platform: _varying_as(args, form) for platform, form in forms.items()}
    return lax.platform_dependent(*args, **forms)


def vary_like(outputs: Any, inputs: Any) -> Any:
    """`outputs`, typed as varying over every manual mesh axis that `inputs` vary over.

    Outside `shard_map` it returns `outputs` as they are. Inside, it gives the
    branches of a `switch` or `cond` one type (a no-op at run time; reverse mode
    sums the cotangent of a replicated input over the axis, as JAX does when a
    replicated value meets a varying one).
    """
    axes = frozenset().union(*(_varying(x) for x in jax.tree.leaves(inputs)))
    if not axes:
        return outputs

    def cast(x: Any) -> Any:
        missing = tuple(sorted(axes - _varying(x)))
        return lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree.map(cast, outputs)


def _varying(x: Any) -> frozenset:
    """The manual mesh axes the type of `x` varies over (none outside `shard_map`)."""
    manual = getattr(jax.typeof(x), "manual_axis_type", None)
    return frozenset(getattr(manual, "varying", ()))


def _varying_as(inputs: Any, form: Callable[..., Any]) -> Callable[..., Any]:
    """`form`, with its outputs varying over the mesh axes of `inputs` (see `vary_like`)."""
    if not any(_varying(x) for x in jax.tree.leaves(inputs)):
        return form
    return lambda *args: vary_like(form(*args), inputs)


def end_row_reductions(values: Any) -> Any:
    """`values`, per-row results of reductions over the classes, unchanged.

    On XLA:CPU each array goes through `row_result`; the generic form is the
    identity.
    """
    return by_platform(values, cpu=_row_results, default=identity)


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


def identity(values: Any) -> Any:
    """`values` unchanged: the form of a pass that one platform needs and the others not."""
    return values
