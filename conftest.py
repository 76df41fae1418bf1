"""Test configuration shared by the test suite and the doctests in jwxent/."""

import jax

# Fail loudly on implicit promotions, as the library promises explicit dtypes.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
