"""The bilingual lexicon between vocabularies: VecMap self-learning, CSLS retrieval, the
alignment artifact and its scores (BLEU-1, BERTScore, P@1)."""
