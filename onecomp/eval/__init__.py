"""Evaluation: perplexity under a fixed, recorded protocol."""
