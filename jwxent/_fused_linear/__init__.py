"""Fused linear projection + softmax cross-entropy for large vocabularies.

`_core.py` streams the projection over vocabulary blocks under a custom VJP and
returns per-row statistics; `_loss.py` validates the inputs and builds the loss
from those statistics in plain JAX.
"""

from jwxent._fused_linear._loss import Implementation as Implementation
from jwxent._fused_linear._loss import (
    linear_softmax_cross_entropy as linear_softmax_cross_entropy,
)
