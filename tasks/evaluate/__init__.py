"""Evaluation: score answers against references (ROUGE-L, BLEU, exact match, facts, similarity), probe safety.

Light on purpose: `evaluate`, `ragas`, Presidio and the embedder are imported
inside the functions that need them, never when this package is imported.
"""
