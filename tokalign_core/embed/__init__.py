"""Token representations: co-occurrence counting, GloVe training, and hidden states of a
source model; each writes an embeddings artifact."""
