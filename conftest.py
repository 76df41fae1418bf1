"""Test configuration shared by the test suite and the doctests in jwxent/."""

import jax

# Fail loudly on implicit promotions, as the library promises explicit dtypes.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

from hypothesis import HealthCheck, settings  # noqa: E402

# Deterministic property tests: the same examples on every run and machine.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ci")
