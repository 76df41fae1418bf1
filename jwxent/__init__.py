"""jwxent: class-weighted cross-entropy losses for JAX with hand-written derivative rules."""

from jwxent._class_balance import ClassBalanceState as ClassBalanceState
from jwxent._class_balance import class_balance_frequencies as class_balance_frequencies
from jwxent._class_balance import class_balance_init as class_balance_init
from jwxent._class_balance import class_balance_update as class_balance_update
from jwxent._class_balance import class_balance_weights as class_balance_weights
from jwxent._class_weights import class_counts as class_counts
from jwxent._class_weights import class_weights_from_counts as class_weights_from_counts
from jwxent._class_weights import cost_matrix_from_class_weights as cost_matrix_from_class_weights
from jwxent._from_probs import binary_cross_entropy as binary_cross_entropy
from jwxent._from_probs import categorical_cross_entropy as categorical_cross_entropy
from jwxent._fused_linear._loss import linear_softmax_cross_entropy as linear_softmax_cross_entropy
from jwxent._long_tail import deferred_reweighting as deferred_reweighting
from jwxent._long_tail import ldam_margins as ldam_margins
from jwxent._long_tail import logit_adjustment_from_counts as logit_adjustment_from_counts
from jwxent._long_tail import post_hoc_logit_adjustment as post_hoc_logit_adjustment
from jwxent._sigmoid import sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy
from jwxent._sigmoid import sigmoid_focal_loss as sigmoid_focal_loss
from jwxent._softmax._focal import softmax_focal_loss as softmax_focal_loss
from jwxent._softmax._focal import (
    softmax_focal_loss_with_integer_labels as softmax_focal_loss_with_integer_labels,
)
from jwxent._softmax._losses import poly_loss_cross_entropy as poly_loss_cross_entropy
from jwxent._softmax._losses import safe_softmax_cross_entropy as safe_softmax_cross_entropy
from jwxent._softmax._losses import softmax_cross_entropy as softmax_cross_entropy
from jwxent._softmax._losses import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)
from jwxent._typing import Reduction as Reduction

__version__ = "0.2.0"

__all__ = [
    "ClassBalanceState",
    "Reduction",
    "binary_cross_entropy",
    "categorical_cross_entropy",
    "class_balance_frequencies",
    "class_balance_init",
    "class_balance_update",
    "class_balance_weights",
    "class_counts",
    "class_weights_from_counts",
    "cost_matrix_from_class_weights",
    "deferred_reweighting",
    "ldam_margins",
    "linear_softmax_cross_entropy",
    "logit_adjustment_from_counts",
    "poly_loss_cross_entropy",
    "post_hoc_logit_adjustment",
    "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "softmax_focal_loss",
    "softmax_focal_loss_with_integer_labels",
]
