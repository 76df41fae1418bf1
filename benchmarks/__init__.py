"""Benchmarks of jwxent against optax, a naive `jnp` loss and a bandwidth floor."""
