"""Builders for test fixtures in the official formats, with random weights (no downloads)."""
