"""Curation: raw partitions to clean, private, deduplicated, split training data."""
