"""One trainer per model family, tuning, evaluation and the MLflow registry (issue 5)."""
