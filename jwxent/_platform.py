"""Backend-specific code paths, chosen when the program is lowered.

jwxent's losses are written once for every backend. A few passes have a
faster form on one compiler only (the XLA:CPU workarounds of `_xla_cpu.py`,
each with the measurement that justifies it). `by_platform` stages both forms
with `lax.platform_dependent`: JAX resolves the choice when it lowers for a
platform, so the CUDA and TPU programs contain only the generic form (no
`case`, no optimisation barrier) and XLA:CPU only its own.

`generic_only()` makes every call take the generic form while it is active,
so that the tests run the GPU/TPU path on CPU. It acts at trace time: trace
(`jax.jit` a fresh function) inside it.
"""

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from jax import lax

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


def by_platform(*args: Any, cpu: Callable[..., Any], default: Callable[..., Any]) -> Any:
    """`cpu(*args)` when lowered for XLA:CPU, `default(*args)` everywhere else."""
    if getattr(_state, "generic_only", False):
        return default(*args)
    return lax.platform_dependent(*args, cpu=cpu, default=default)
