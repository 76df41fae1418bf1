"""optax's own classification tests, run on jwxent's functions.

jwxent promises to be a drop-in superset of optax's classification losses.
The strongest proof is optax's own test suite: its test module calls every
loss through the module attribute `_classification`, so pointing that
attribute at jwxent runs optax's tests (values, `jit`, forward- and
reverse-mode gradients by `jax.test_util.check_grads`, masks, axes, traced
focal hyperparameters) unchanged against jwxent.
"""

import types

import jax
import numpy as np
from optax.losses import _classification_test as optax_suite

import jwxent

LOSSES = (
    "softmax_cross_entropy",
    "safe_softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "sigmoid_binary_cross_entropy",
    "poly_loss_cross_entropy",
    "sigmoid_focal_loss",
)
optax_suite._classification = types.SimpleNamespace(**{n: getattr(jwxent, n) for n in LOSSES})


def _standard_promotion(case: type) -> type:
    """optax's tests mix dtypes freely; this suite's default is strict promotion.

    Their masks come from NumPy's global generator, seeded here so that a run
    is reproducible (an all-False mask, an empty class axis, is tested in
    tests/test_softmax.py).
    """
    setup = case.setUp

    def set_up(self):
        self.enterContext(jax.numpy_dtype_promotion("standard"))
        np.random.seed(0)
        setup(self)

    return type(case.__name__, (case,), {"setUp": set_up, "__module__": __name__})


SoftmaxCrossEntropyTest = _standard_promotion(optax_suite.SoftmaxCrossEntropyTest)
SafeSoftmaxCrossEntropyTest = _standard_promotion(optax_suite.SafeSoftmaxCrossEntropyTest)
SoftmaxCrossEntropyWithIntegerLabelsTest = _standard_promotion(
    optax_suite.SoftmaxCrossEntropyWithIntegerLabelsTest
)
SigmoidCrossEntropyTest = _standard_promotion(optax_suite.SigmoidCrossEntropyTest)
PolyLossTest = _standard_promotion(optax_suite.PolyLossTest)
SigmoidFocalLossTest = _standard_promotion(optax_suite.SigmoidFocalLossTest)


def test_the_suite_calls_jwxent():
    """The six test cases above run jwxent's functions, not optax's."""
    for name in LOSSES:
        assert getattr(optax_suite._classification, name) is getattr(jwxent, name)
    cases = [SoftmaxCrossEntropyTest, SafeSoftmaxCrossEntropyTest, PolyLossTest]
    cases += [SoftmaxCrossEntropyWithIntegerLabelsTest, SigmoidCrossEntropyTest]
    assert sum(len([m for m in dir(c) if m.startswith("test")]) for c in cases) > 0
