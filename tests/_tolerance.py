"""The one tolerance rule of the test suite: scaled by dtype and terms summed."""

import math

import numpy as np

_EPS = {"bfloat16": 2.0**-7, "float16": 2.0**-10, "float32": 2.0**-23, "float64": 2.0**-52}


def tolerance(dtype, terms: int = 1) -> float:
    """Relative and absolute tolerance for a result of `dtype` summing `terms` values.

    A few hundred ulps of the input dtype (inputs are rounded to it), grown
    with the square root of the number of terms a reduction adds up.
    """
    eps = _EPS[np.dtype(dtype).name]
    return 256 * eps * math.sqrt(max(terms, 1))


def assert_close(actual, expected, dtype, terms: int = 1, err_msg: str = "") -> None:
    """`np.testing.assert_allclose` with the suite's tolerance for `dtype`."""
    tol = tolerance(dtype, terms)
    np.testing.assert_allclose(
        np.asarray(actual, np.float64),
        np.asarray(expected, np.float64),
        rtol=tol,
        atol=tol,
        err_msg=err_msg,
    )
