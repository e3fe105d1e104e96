"""MLflow: the store, the mirror of a study, its background thread, the pictures."""
