"""absl launch scripts: thin command-line wrappers over the ccc_jax library."""
