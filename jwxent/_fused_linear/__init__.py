"""Fused linear projection + softmax cross-entropy for large vocabularies.

`_chunks.py` cuts the tokens into chunks (one plan for XLA:CPU, one for GPUs
and TPUs), `_sweep.py` streams over them with the derivative rules,
`_xla_cpu.py` holds the XLA:CPU form of the weight-gradient update, and
`_loss.py` validates the inputs and assembles the loss.
"""
