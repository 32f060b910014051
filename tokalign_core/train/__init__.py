"""Training: the two-stage adaptation loop (``python -m tokalign_core.train``, DeepSpeed or
plain torch), token-level distillation, toy pretraining and packed training data."""
