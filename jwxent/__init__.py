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
# <exports: class-weight tools>
# <exports: fused linear>

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
    # <all: class-weight tools>
    # <all: fused linear>
]
