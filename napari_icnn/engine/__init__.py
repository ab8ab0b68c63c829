"""Training, evaluation and inference engines (no GUI code)."""
