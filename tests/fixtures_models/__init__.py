"""Tiny importable models and data for the model-command tests (import strings)."""
