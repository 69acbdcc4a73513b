"""ccc-jax."""
