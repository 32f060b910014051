"""Evaluation of causal LMs across tokenizers: normalised perplexity, bits per byte,
compression."""
