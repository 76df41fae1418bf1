"""optax's own classification tests, run on jwxent's functions.

jwxent promises to be a drop-in superset of optax's classification losses.
The strongest proof is optax's own test suite: its test module calls every
loss through the module attribute `_classification`, so pointing that
attribute at jwxent runs optax's tests (values, `jit`, forward- and
reverse-mode gradients by `jax.test_util.check_grads`, masks, axes, traced
focal hyperparameters) unchanged against jwxent.
"""

import functools
import types
from unittest import mock

import jax
import numpy as np
from optax.losses import _classification_test as optax_suite

import jwxent
from jwxent import _platform

LOSSES = (
    "softmax_cross_entropy",
    "safe_softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "sigmoid_binary_cross_entropy",
    "poly_loss_cross_entropy",
    "sigmoid_focal_loss",
)
optax_suite._classification = types.SimpleNamespace(**{n: getattr(jwxent, n) for n in LOSSES})


def _fresh(fn):
    """`fn` as a new function object: `jax.jit` caches traces per function, and
    a trace of the other path must not be reused."""
    return functools.wraps(fn)(lambda *args, **kwargs: fn(*args, **kwargs))


GENERIC = types.SimpleNamespace(**{n: _fresh(getattr(jwxent, n)) for n in LOSSES})


def _standard_promotion(case: type, path: str = "") -> type:
    """optax's tests mix dtypes freely; this suite's default is strict promotion.

    Their masks come from NumPy's global generator, seeded here so that a run
    is reproducible (an all-False mask, an empty class axis, is tested in
    tests/test_softmax.py). With `path="Generic"` the case runs the forms
    that GPU and TPU programs use (`_platform.generic_only`), on functions of
    its own (`GENERIC`).
    """
    setup = case.setUp

    def set_up(self):
        self.enterContext(jax.numpy_dtype_promotion("standard"))
        if path:
            self.enterContext(mock.patch.object(optax_suite, "_classification", GENERIC))
            self.enterContext(_platform.generic_only())
        np.random.seed(0)
        setup(self)

    name = case.__name__.replace("Test", f"{path}Test")
    return type(name, (case,), {"setUp": set_up, "__module__": __name__})


CASES = (
    optax_suite.SoftmaxCrossEntropyTest,
    optax_suite.SafeSoftmaxCrossEntropyTest,
    optax_suite.SoftmaxCrossEntropyWithIntegerLabelsTest,
    optax_suite.SigmoidCrossEntropyTest,
    optax_suite.PolyLossTest,
    optax_suite.SigmoidFocalLossTest,
)
# Each case twice: on this machine's program, and on the generic (GPU/TPU) forms.
WRAPPED = [_standard_promotion(case, path) for case in CASES for path in ("", "Generic")]
globals().update({case.__name__: case for case in WRAPPED})


def test_the_suite_calls_jwxent():
    """The wrapped cases run jwxent's functions, not optax's, on both paths."""
    for name in LOSSES:
        assert getattr(optax_suite._classification, name) is getattr(jwxent, name)
    assert len({case.__name__ for case in WRAPPED}) == 2 * len(CASES)
    assert all(globals()[case.__name__] is case for case in WRAPPED)
    assert sum(len([m for m in dir(c) if m.startswith("test")]) for c in WRAPPED) > 0
