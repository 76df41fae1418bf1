"""The one registry of public losses that the conformance matrix iterates over.

Each `Loss` names a public function and says how to make its inputs, which
keyword sets ("variants") it takes, which scalar hyperparameters it lets be
traced, and which reference (from `tests/_references.py`) defines it. A loss
added here is covered by every test of `tests/test_matrix.py` and by the
sharding worker.

Inputs come as one dict of float64 / integer / bool NumPy arrays; a variant
maps that dict to the keyword arguments of one call. Every floating array a
call uses (data or keyword) is differentiable and is differentiated.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jwxent
from jwxent import _typing
from tests import _references as ref

IGNORE = -100
Arrays = dict[str, np.ndarray]
Variant = Callable[[Arrays], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Loss:
    """A public loss in the matrix.

    Attributes:
      name: the function's name in `jwxent`.
      data: the names of its positional data arguments, in order.
      make: `(seed, batch_shape, num_classes) -> arrays` (float64, int, bool).
      variants: name -> keyword arguments built from the arrays.
      hyperparameters: the scalar keywords that may be traced, with a value.
      reference: the float64 reference, called like the loss plus `xp=`.
      layout: `"softmax"` (class axis last), `"elementwise"` or `"fused"`,
        for the sharding worker.
    """

    name: str
    data: tuple[str, ...]
    make: Callable[[int, tuple[int, ...], int], Arrays]
    variants: dict[str, Variant]
    hyperparameters: dict[str, float]
    reference: Callable[..., Any]
    layout: str

    @property
    def fn(self) -> Callable[..., Any]:
        return getattr(jwxent, self.name)

    def __str__(self) -> str:
        return self.name


# ---------------------------------------------------------------------------
# Inputs.
# ---------------------------------------------------------------------------


def _common(rng: np.random.Generator, batch: tuple[int, ...], classes: int) -> Arrays:
    """The keyword arrays every softmax-family loss can take."""
    return {
        "weights": rng.uniform(0.2, 2.0, batch),
        "where": rng.random(batch) < 0.75,
        "class_mask": (rng.random(batch + (classes,)) < 0.75) | (np.arange(classes) == 0),
        "class_weights": rng.uniform(0.2, 3.0, classes),
        # (Tests at tens of thousands of classes build their own inputs.)
        "cost_matrix": rng.uniform(0.2, 2.0, (classes, classes)),
        "logit_adjustment": rng.normal(0.0, 1.0, classes),
        "label_margins": rng.uniform(0.0, 1.0, classes),
    }


def _labels(rng: np.random.Generator, batch: tuple[int, ...], classes: int) -> Arrays:
    labels = rng.integers(0, classes, batch).astype(np.int32)
    ignored = rng.random(batch) < 0.25
    return {"labels": labels, "ignored_labels": np.where(ignored, IGNORE, labels).astype(np.int32)}


def integer_inputs(seed: int, batch: tuple[int, ...], classes: int) -> Arrays:
    rng = np.random.default_rng(seed)
    logits = 3.0 * rng.standard_normal(batch + (classes,))
    return {"logits": logits, **_labels(rng, batch, classes), **_common(rng, batch, classes)}


def probability_inputs(seed: int, batch: tuple[int, ...], classes: int) -> Arrays:
    rng = np.random.default_rng(seed)
    logits = 3.0 * rng.standard_normal(batch + (classes,))
    probs = rng.dirichlet(np.ones(classes), batch) if classes > 1 else np.ones(batch + (1,))
    return {"logits": logits, "labels": probs, **_common(rng, batch, classes)}


def sigmoid_inputs(seed: int, batch: tuple[int, ...], classes: int) -> Arrays:
    """Elementwise losses: `[*batch, classes]` decisions, soft labels."""
    rng = np.random.default_rng(seed)
    shape = batch + (classes,)
    return {
        "logits": 3.0 * rng.standard_normal(shape),
        "labels": rng.uniform(0.0, 1.0, shape),
        "weights": rng.uniform(0.2, 2.0, shape),
        "where": rng.random(shape) < 0.75,
        "pos_weight": rng.uniform(0.5, 4.0, classes),
        "alpha": rng.uniform(0.2, 0.8, classes),
    }


def from_probs_inputs(seed: int, batch: tuple[int, ...], classes: int) -> Arrays:
    """Keras probability inputs, kept away from the clip bounds."""
    rng = np.random.default_rng(seed)
    shape = batch + (classes,)
    probs = rng.dirichlet(np.ones(classes), batch) if classes > 1 else np.ones(shape)
    return {
        "probs": 0.9 * probs + 0.1 / classes,
        "labels": rng.dirichlet(np.ones(classes), batch) if classes > 1 else np.ones(shape),
        "binary_probs": rng.uniform(0.05, 0.95, shape),
        "binary_labels": rng.uniform(0.0, 1.0, shape),
        "pos_weight": rng.uniform(0.5, 4.0, classes),
        **{k: v for k, v in _common(rng, batch, classes).items() if k != "class_mask"},
    }


HIDDEN = 6


def fused_inputs(seed: int, batch: tuple[int, ...], classes: int) -> Arrays:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal(batch + (HIDDEN,)),
        "w": 2.0 * rng.standard_normal((HIDDEN, classes)) / np.sqrt(HIDDEN),
        "bias": rng.standard_normal(classes),
        **_labels(rng, batch, classes),
        **_common(rng, batch, classes),
    }


# ---------------------------------------------------------------------------
# Variants: keyword arguments from the arrays.
# ---------------------------------------------------------------------------


def _pick(*names: str, **literals: Any) -> Variant:
    """A variant passing the named arrays (and literal keywords) as keywords."""

    def variant(arrays: Arrays) -> dict[str, Any]:
        return {**{name: arrays[name] for name in names}, **literals}

    return variant


def _renamed(variant: Variant, **renames: str) -> Variant:
    """`variant` with some keywords taken from other arrays (`keyword="array"`)."""

    def renamed(arrays: Arrays) -> dict[str, Any]:
        return {**variant(arrays), **{k: arrays[v] for k, v in renames.items()}}

    return renamed


PLAIN = _pick()
INTEGER_EVERYTHING = _renamed(
    _pick(
        "weights",
        "class_weights",
        "cost_matrix",
        "where",
        "logit_adjustment",
        "label_margins",
        ignore_index=IGNORE,
        label_smoothing=0.1,
        z_loss=1e-2,
    ),
    labels="ignored_labels",
)
PROBABILITY_EVERYTHING = _pick(
    "weights",
    "class_weights",
    "cost_matrix",
    "where",
    "logit_adjustment",
    label_smoothing=0.1,
    z_loss=1e-2,
)
CLASS_MASK = _renamed(_pick("class_weights"), where="class_mask")
# Probability labels also smooth under a class mask: the smoothing total counts
# only the classes left, each by its class weight.
PROBABILITY_CLASS_MASK = _renamed(_pick("class_weights", label_smoothing=0.1), where="class_mask")


def _integer_variants(**extra: Any) -> dict[str, Variant]:
    everything = INTEGER_EVERYTHING
    if extra:
        everything = _renamed_literals(everything, **extra)
    return {"plain": PLAIN, "everything": everything, "class_mask": CLASS_MASK}


def _renamed_literals(variant: Variant, **literals: Any) -> Variant:
    return lambda arrays: {**variant(arrays), **literals}


def _without(variant: Variant, *names: str) -> Variant:
    return lambda arrays: {k: v for k, v in variant(arrays).items() if k not in names}


# ---------------------------------------------------------------------------
# References, called like the public functions (data positional, `xp=`).
# ---------------------------------------------------------------------------


def _poly_reference(logits, labels, epsilon=2.0, **kwargs):
    return ref.softmax_cross_entropy(logits, labels, poly_epsilon=epsilon, **kwargs)


def _fused_reference(x, w, labels, **kwargs):
    return ref.linear_softmax_cross_entropy(x, w, labels, **kwargs)


# ---------------------------------------------------------------------------
# The registry.
# ---------------------------------------------------------------------------

_SMOOTH_Z = {"label_smoothing": 0.1, "z_loss": 1e-2}

LOSSES: tuple[Loss, ...] = (
    Loss(
        "softmax_cross_entropy_with_integer_labels",
        ("logits", "labels"),
        integer_inputs,
        _integer_variants(),
        _SMOOTH_Z,
        ref.softmax_cross_entropy_with_integer_labels,
        "softmax",
    ),
    Loss(
        "softmax_cross_entropy",
        ("logits", "labels"),
        probability_inputs,
        {
            "plain": PLAIN,
            "everything": PROBABILITY_EVERYTHING,
            "class_mask": PROBABILITY_CLASS_MASK,
        },
        _SMOOTH_Z,
        ref.softmax_cross_entropy,
        "softmax",
    ),
    Loss(
        "safe_softmax_cross_entropy",
        ("logits", "labels"),
        probability_inputs,
        {"plain": PLAIN, "everything": PROBABILITY_EVERYTHING},
        _SMOOTH_Z,
        ref.softmax_cross_entropy,
        "softmax",
    ),
    Loss(
        "poly_loss_cross_entropy",
        ("logits", "labels"),
        probability_inputs,
        {
            "plain": PLAIN,
            "everything": _renamed_literals(PROBABILITY_EVERYTHING, epsilon=1.5),
            "class_mask": _renamed_literals(PROBABILITY_CLASS_MASK, epsilon=-0.5),
        },
        {**_SMOOTH_Z, "epsilon": 1.5},
        _poly_reference,
        "softmax",
    ),
    Loss(
        "softmax_focal_loss",
        ("logits", "labels"),
        probability_inputs,
        {
            "plain": PLAIN,
            "everything": _renamed_literals(PROBABILITY_EVERYTHING, gamma=1.5),
            "class_mask": PROBABILITY_CLASS_MASK,
        },
        {**_SMOOTH_Z, "gamma": 1.5},
        ref.softmax_focal_loss,
        "softmax",
    ),
    Loss(
        "softmax_focal_loss_with_integer_labels",
        ("logits", "labels"),
        integer_inputs,
        _integer_variants(gamma=1.5),
        {**_SMOOTH_Z, "gamma": 1.5},
        ref.softmax_focal_loss_with_integer_labels,
        "softmax",
    ),
    Loss(
        "sigmoid_binary_cross_entropy",
        ("logits", "labels"),
        sigmoid_inputs,
        {
            "plain": PLAIN,
            "everything": _pick("weights", "pos_weight", "where", label_smoothing=0.1),
        },
        {"label_smoothing": 0.1},
        ref.sigmoid_binary_cross_entropy,
        "elementwise",
    ),
    Loss(
        "sigmoid_focal_loss",
        ("logits", "labels"),
        sigmoid_inputs,
        {"plain": PLAIN, "everything": _pick("alpha", "weights", "where", gamma=1.5)},
        {"gamma": 1.5},
        ref.sigmoid_focal_loss,
        "elementwise",
    ),
    Loss(
        "categorical_cross_entropy",
        ("probs", "labels"),
        from_probs_inputs,
        {
            "plain": PLAIN,
            "everything": _pick("weights", "class_weights", "where", label_smoothing=0.1),
        },
        {"label_smoothing": 0.1, "epsilon": 1e-3},
        ref.categorical_cross_entropy,
        "softmax",
    ),
    Loss(
        "binary_cross_entropy",
        ("binary_probs", "binary_labels"),
        from_probs_inputs,
        {
            "plain": PLAIN,
            "everything": _pick("weights", "pos_weight", "where", label_smoothing=0.1),
        },
        {"label_smoothing": 0.1, "epsilon": 1e-3},
        ref.binary_cross_entropy,
        "softmax",
    ),
    Loss(
        "linear_softmax_cross_entropy",
        ("x", "w", "labels"),
        fused_inputs,
        {
            "plain": PLAIN,
            "everything": _pick(
                "bias",
                "weights",
                "class_weights",
                "where",
                "logit_adjustment",
                "label_margins",
                label_smoothing=0.1,
                z_loss=1e-2,
                logit_soft_cap=5.0,
            ),
            "ignore_index": _renamed(_pick(ignore_index=IGNORE), labels="ignored_labels"),
        },
        {**_SMOOTH_Z, "logit_soft_cap": 5.0},
        _fused_reference,
        "fused",
    ),
)

BY_NAME = {loss.name: loss for loss in LOSSES}
# The one list of reductions: the values of the public `Reduction` type.
REDUCTIONS = _typing.REDUCTIONS


def cases(*variants: str) -> list[tuple[Loss, str]]:
    """Every (loss, variant) pair among `variants` (all variants if none given)."""
    return [
        (loss, name)
        for loss in LOSSES
        for name in loss.variants
        if not variants or name in variants
    ]


def case_id(case: tuple[Loss, str]) -> str:
    return f"{case[0].name}-{case[1]}"


@functools.cache
def arrays(loss_name: str, seed: int = 0, batch: tuple[int, ...] = (4, 3), classes: int = 5):
    """The (cached) inputs of a loss: float64, integer and bool NumPy arrays."""
    return BY_NAME[loss_name].make(seed, batch, classes)


def call_values(loss: Loss, variant: str, inputs: Arrays) -> dict[str, Any]:
    """Every argument of one call by name: the data first, then the keywords.

    A variant overrides a data argument by returning it under the data's name
    (e.g. `labels` with some labels ignored).
    """
    kwargs = loss.variants[variant](inputs)
    data = {name: kwargs.pop(name) if name in kwargs else inputs[name] for name in loss.data}
    return {**data, **kwargs}


def call(loss: Loss, values: dict[str, Any], *, reference: bool = False, **extra: Any) -> Any:
    """Calls the loss (or its reference in plain JAX, float64) with `values` and `extra`."""
    args = [values[name] for name in loss.data]
    kwargs = {k: v for k, v in values.items() if k not in loss.data}
    if reference:
        # The references use NumPy's implicit rank and dtype promotion.
        with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
            return loss.reference(*args, xp=jnp, **kwargs, **extra)
    return loss.fn(*args, **kwargs, **extra)


def differentiable(values: dict[str, Any]) -> list[str]:
    """The names of the floating-point arrays among `values` (data or keywords)."""
    return [
        name
        for name, value in values.items()
        if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)
    ]
