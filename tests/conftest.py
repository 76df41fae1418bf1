"""Settings for the whole suite.

On a GPU, float32 matmuls at full precision: on recent NVIDIA GPUs JAX's
default precision multiplies float32 in TF32 (about 3 decimal digits), which
would make the fused loss's comparisons with float64 references, and between
its own transformed calls, a test of the GPU's matmul units. The fused loss
follows JAX's default precision like `x @ w` (docs/semantics.md). On CPUs the
default is kept, so the suite tests the programs users compile.
"""

import jax

if jax.default_backend() == "gpu":
    jax.config.update("jax_default_matmul_precision", "highest")
