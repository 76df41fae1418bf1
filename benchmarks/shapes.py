"""The one registry of named shapes, shared by the benchmarks and the tests.

A `Shape` is a `[batch, classes]` logits shape with a name and tags. The
`"ci"` tag marks the sizes small enough for the test suite; `"full"` marks the
sizes of the performance bars (SPEC §8). Select by name or tag:

    >>> [s.name for s in select(["tiny"])]
    ['tiny']
    >>> [s.name for s in select(["full"])]
    ['65536x1000', '8192x32000', '2048x128256']
"""

import dataclasses
from collections.abc import Iterable

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Shape:
    """A named `[batch, classes]` logits shape.

    Attributes:
      name: unique key, e.g. `"8192x32000"`.
      batch: number of examples (rows).
      classes: number of classes (the softmax axis, last).
      tags: labels for selecting groups of shapes (`"ci"`, `"full"`).
    """

    name: str
    batch: int
    classes: int
    tags: frozenset[str] = frozenset()

    @property
    def logits_shape(self) -> tuple[int, int]:
        return (self.batch, self.classes)


def _named(batch: int, classes: int, *tags: str) -> Shape:
    return Shape(f"{batch}x{classes}", batch, classes, frozenset(tags))


SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        # Smoke size for CI: classes not a multiple of 8 on purpose.
        Shape("tiny", 64, 100, frozenset({"ci"})),
        # Big enough for XLA to pick its real fusion strategy, small enough for a
        # fast `memory_analysis()` test.
        Shape("memory", 512, 4096, frozenset({"ci"})),
        _named(65536, 1000, "full"),
        _named(8192, 32000, "full"),
        _named(2048, 128256, "full"),
    )
}

DTYPES: dict[str, jnp.dtype] = {
    "f32": jnp.dtype(jnp.float32),
    "bf16": jnp.dtype(jnp.bfloat16),
}


def select(names_or_tags: Iterable[str]) -> list[Shape]:
    """Shapes whose name or one of whose tags is in `names_or_tags`, in registry order.

    Raises:
      ValueError: a name or tag that matches no shape.
    """
    wanted = set(names_or_tags)
    known = set(SHAPES) | {tag for shape in SHAPES.values() for tag in shape.tags}
    unknown = wanted - known
    if unknown:
        raise ValueError(f"Unknown shape names or tags {sorted(unknown)}; known: {sorted(known)}.")
    return [s for s in SHAPES.values() if s.name in wanted or s.tags & wanted]
