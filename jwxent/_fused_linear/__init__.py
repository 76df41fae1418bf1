"""Fused linear projection + softmax cross-entropy for large vocabularies.

`_chunks.py` cuts the tokens into chunks, `_sweep.py` streams over them with
the derivative rules, `_loss.py` validates the inputs and assembles the loss.
"""
