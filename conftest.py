"""Test configuration shared by the test suite and the doctests in jwxent/."""

import os
import subprocess
import sys

# The tests check numbers, not speed: XLA:CPU compiles about twice as fast
# without LLVM's expensive passes and with the older fusion emitter, and every
# HLO pass (fusion, precision, buffer assignment) is unchanged. XLA aborts on
# a flag it does not know, so the controlling process tries them in a
# subprocess first; pytest-xdist workers inherit the result.
FAST_COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"
)


def _use_fast_compile_flags() -> None:
    if "PYTEST_XDIST_WORKER" in os.environ:
        return
    flags = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()
    probe = [sys.executable, "-c", "import jax; jax.jit(lambda x: x + 1)(1.0)"]
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    if subprocess.run(probe, env=env, capture_output=True).returncode == 0:
        os.environ["XLA_FLAGS"] = flags


_use_fast_compile_flags()

import jax  # noqa: E402

# Fail loudly on implicit promotions, as the library promises explicit dtypes.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

from hypothesis import HealthCheck, settings  # noqa: E402

# Deterministic property tests: the same examples on every run and machine.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ci")
