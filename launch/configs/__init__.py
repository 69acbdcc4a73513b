"""ml_collections config files, one per corpus, with variants."""
