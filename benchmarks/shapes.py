"""The one registry of named shapes, shared by the benchmarks and the tests.

Two registries, one per kind of input:

* `SHAPES`: `[batch, classes]` logits (`Shape`), for the softmax and sigmoid
  losses;
* `LINEAR_SHAPES`: `x: [tokens, hidden]` times `w: [hidden, vocab]`
  (`LinearShape`), for the fused linear + cross-entropy loss.

The `"ci"` tag marks the sizes small enough for the test suite; `"full"` marks
the sizes of the performance bars; `"accel"` marks the fused loss's
large-vocabulary sizes, compiled for accelerators only (`benchmarks.run
--target`). Both registries have a `"tiny"` shape, so `--sizes tiny` gives
every benchmark family its smoke size. Select by name or tag:

    >>> [s.name for s in select(["tiny"])]
    ['tiny']
    >>> [s.name for s in select(["full"])]
    ['65536x1000', '8192x32000', '2048x128256']
    >>> [s.name for s in select(["full"], LINEAR_SHAPES)]
    ['8192x256x32000', '4096x1024x32000', '8192x1024x32000']
"""

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TypeVar

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

    @property
    def dims(self) -> dict[str, int]:
        """The sizes that go into every benchmark record."""
        return {"batch": self.batch, "classes": self.classes}


@dataclasses.dataclass(frozen=True)
class LinearShape:
    """A named projection + loss shape: `x: [tokens, hidden]`, `w: [hidden, vocab]`.

    The logits it stands for are `[tokens, vocab]`, so `batch` is `tokens` and
    `classes` is `vocab` in the records, as for a `Shape`.
    """

    name: str
    tokens: int
    hidden: int
    vocab: int
    tags: frozenset[str] = frozenset()

    @property
    def batch(self) -> int:
        return self.tokens

    @property
    def dims(self) -> dict[str, int]:
        return {"batch": self.tokens, "hidden": self.hidden, "classes": self.vocab}


def _named(batch: int, classes: int, *tags: str) -> Shape:
    return Shape(f"{batch}x{classes}", batch, classes, frozenset(tags))


def _linear(tokens: int, hidden: int, vocab: int, *tags: str) -> LinearShape:
    return LinearShape(f"{tokens}x{hidden}x{vocab}", tokens, hidden, vocab, frozenset(tags))


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

LINEAR_SHAPES: dict[str, LinearShape] = {
    shape.name: shape
    for shape in (
        LinearShape("tiny", 64, 32, 100, frozenset({"ci"})),
        _linear(8192, 256, 32000, "full"),
        _linear(4096, 1024, 32000, "full"),
        _linear(8192, 1024, 32000, "full"),
        # Llama-3-size vocabularies, compiled for accelerators only (`--target`, `--sizes accel`):
        # too slow on a CPU for the `full` run.
        _linear(8192, 4096, 128256, "accel"),
        _linear(32768, 4096, 128256, "accel"),
    )
}

REGISTRIES: tuple[Mapping[str, Shape | LinearShape], ...] = (SHAPES, LINEAR_SHAPES)

DTYPES: dict[str, jnp.dtype] = {
    "f32": jnp.dtype(jnp.float32),
    "bf16": jnp.dtype(jnp.bfloat16),
}

S = TypeVar("S", Shape, LinearShape)


def known(registries: Iterable[Mapping[str, Shape | LinearShape]] = REGISTRIES) -> set[str]:
    """Every shape name and tag of `registries`."""
    return {
        key
        for registry in registries
        for shape in registry.values()
        for key in (shape.name, *shape.tags)
    }


def select(
    names_or_tags: Iterable[str], registry: Mapping[str, S] = SHAPES, *, strict: bool = True
) -> list[S]:
    """Shapes whose name or one of whose tags is in `names_or_tags`, in registry order.

    Args:
      names_or_tags: shape names (`"8192x32000"`) or tags (`"ci"`, `"full"`).
      registry: `SHAPES` (the default) or `LINEAR_SHAPES`.
      strict: raise on a name or tag that matches no shape of `registry`;
        without it such names are skipped (the runner checks them against
        every registry with `known()` instead).

    Raises:
      ValueError: with `strict`, a name or tag that matches no shape.
    """
    wanted = set(names_or_tags)
    unknown = wanted - known([registry])
    if strict and unknown:
        raise ValueError(
            f"Unknown shape names or tags {sorted(unknown)}; known: {sorted(known([registry]))}."
        )
    return [s for s in registry.values() if s.name in wanted or s.tags & wanted]
