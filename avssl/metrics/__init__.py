"""Evaluation metrics as pure functions (no Lightning, no data loading)."""
