"""Speaks the Reve API; knows nothing of operators."""
