"""Benchmarks of jwxent against optax, plain JAX and a bandwidth floor, one family per module.

Every `bench_*.py` module defines `FAMILY`, a `harness.Family`; `families()`
finds them all. `python -m benchmarks.run` measures them and
`python -m benchmarks.render` turns the records into `docs/benchmarks.md`.
"""

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.harness import Family

ORDER = ("softmax", "soft", "focal", "sigmoid", "fused")
"""Families in table order; any other `bench_*.py` family comes after them."""


@functools.cache
def families() -> "dict[str, Family]":
    """The `FAMILY` of every `benchmarks/bench_*.py` module, by name, in table order."""
    found = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("bench_"):
            family = importlib.import_module(f"{__name__}.{module.name}").FAMILY
            found[family.name] = family
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda item: (rank.get(item[0], len(ORDER)), item[0])))
