"""TFDS builders for the corpora ccc-jax trains on (run from the repository root; see BUILD_NOTES.md)."""
