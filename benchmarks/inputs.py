"""Random benchmark inputs, made with NumPy on the host (no JAX compilation).

Every family's `make_inputs` builds its arguments from these, seeded, so the
same shape and dtype always give the same arrays; `harness.run_family` puts
them on the device.
"""

import numpy as np


def generator(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def normal(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    """float32 normals of standard deviation `scale`."""
    return scale * rng.standard_normal(shape, np.float32)


def logits(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Normals of standard deviation 2 in `dtype` (a float32 draw, rounded)."""
    return normal(rng, shape, 2.0).astype(dtype)


def labels(rng: np.random.Generator, batch: int, classes: int) -> np.ndarray:
    """int32 labels, uniform over the classes."""
    return rng.integers(0, classes, batch, dtype=np.int32)


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def probs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float32 probability labels: a softmax of normals along the last axis."""
    return np.exp(log_softmax(normal(rng, shape)))


def uniform(rng: np.random.Generator, size: int, low: float, high: float) -> np.ndarray:
    """float32 uniforms in `[low, high)`: class weights, `pos_weight`."""
    return rng.uniform(low, high, size).astype(np.float32)
