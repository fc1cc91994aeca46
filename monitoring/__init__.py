"""Drift and performance reports and the retraining policy (issue 8)."""
