"""jwxent: class-weighted cross-entropy losses for JAX with custom-VJP gradients."""

from jwxent._softmax import poly_loss_cross_entropy as poly_loss_cross_entropy
from jwxent._softmax import safe_softmax_cross_entropy as safe_softmax_cross_entropy
from jwxent._softmax import softmax_cross_entropy as softmax_cross_entropy
from jwxent._softmax import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)
from jwxent._typing import Reduction as Reduction

# <exports: sigmoid family>
# <exports: focal losses>
# <exports: probability inputs>
from jwxent._class_balance import ClassBalanceState as ClassBalanceState
from jwxent._class_balance import class_balance_frequencies as class_balance_frequencies
from jwxent._class_balance import class_balance_init as class_balance_init
from jwxent._class_balance import class_balance_update as class_balance_update
from jwxent._class_balance import class_balance_weights as class_balance_weights
from jwxent._weights import class_counts as class_counts
from jwxent._weights import class_weights_from_counts as class_weights_from_counts
from jwxent._weights import cost_matrix_from_class_weights as cost_matrix_from_class_weights
from jwxent._fused_linear import linear_softmax_cross_entropy as linear_softmax_cross_entropy

__version__ = "0.1.0"

__all__ = [
    "Reduction",
    "poly_loss_cross_entropy",
    "safe_softmax_cross_entropy",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    # <all: sigmoid family>
    # <all: focal losses>
    # <all: probability inputs>
    "ClassBalanceState",
    "class_balance_frequencies",
    "class_balance_init",
    "class_balance_update",
    "class_balance_weights",
    "class_counts",
    "class_weights_from_counts",
    "cost_matrix_from_class_weights",
    "linear_softmax_cross_entropy",
]
