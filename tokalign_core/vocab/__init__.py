"""Tokenizers and vocabularies: loading any tokenizer spec, the byte-level vocabulary view
(shared tokens, pieces), and tokenizing a corpus into a tokens artifact."""
