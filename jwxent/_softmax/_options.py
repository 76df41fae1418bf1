"""The keywords of a softmax-family loss as one value, checked once.

Every public softmax loss keeps its explicit keyword signature (optax's
style: the keywords are the API). Its first line packs them into `Options`,
whose construction runs every check that does not need the logits' shape;
the pipeline (`_pipeline.py`) and the fused loss carry that one value.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from jwxent import _checks
from jwxent._numerics import is_static_zero
from jwxent._typing import ArrayLike, Reduction


@dataclasses.dataclass(frozen=True)
class Options:
    """The options of one softmax-family loss call.

    Attributes mirror the public keywords: `weights` (per example),
    `class_weights`, `cost_matrix`, `ignore_index`, `label_smoothing`,
    `z_loss`, `logit_adjustment`, `label_margins` and `reduction`; `gamma`
    (focal losses) and `poly_epsilon` (the poly loss) are None elsewhere.
    Numbers may be Python numbers or (traced) scalar arrays.

    Raises:
      ValueError: `label_smoothing` outside [0, 1), a negative `z_loss` or
        `gamma`, an unknown `reduction`.
    """

    weights: ArrayLike | None = None
    class_weights: ArrayLike | None = None
    cost_matrix: ArrayLike | None = None
    ignore_index: int | None = None
    label_smoothing: ArrayLike = 0.0
    z_loss: ArrayLike = 0.0
    logit_adjustment: ArrayLike | None = None
    label_margins: ArrayLike | None = None
    reduction: Reduction = "none"
    gamma: ArrayLike | None = None
    poly_epsilon: ArrayLike | None = None

    def __post_init__(self) -> None:
        _checks.check_label_smoothing(self.label_smoothing)
        _checks.check_nonnegative(self.z_loss, "z_loss")
        _checks.check_reduction(self.reduction)
        if self.gamma is not None:
            _checks.check_nonnegative(self.gamma, "gamma")
        if self.poly_epsilon is not None:
            _checks.check_hyperparameter(self.poly_epsilon, "epsilon", minimum=-float("inf"))

    @classmethod
    def of(cls, keywords: Mapping[str, Any], **renamed: Any) -> "Options":
        """The options among a public loss's arguments (`locals()` at its top), by name.

        The data arguments (`logits`, `labels`, `axis`, `where`) are not
        options; `renamed` gives those whose public name differs (PolyLoss's
        `epsilon`).
        """
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in keywords.items() if k in names}, **renamed)

    @property
    def smoothed(self) -> bool:
        """Whether label smoothing may be on (a traced `label_smoothing` may be 0)."""
        return not is_static_zero(self.label_smoothing)

    @property
    def with_z_loss(self) -> bool:
        return not is_static_zero(self.z_loss)
