"""Training: the two-stage adaptation loop (``python -m tokalign_core.train``, DeepSpeed or
plain torch), token-level distillation, toy pretraining and packed training data.

``loop.run_training`` composes one module per concern: ``distributed`` (rank, device,
seeds), ``context`` (tokenizer, model, data, teacher), ``stages`` (what each stage trains),
``schedule`` (warm-up + cosine LR), ``engine`` (DeepSpeed / torch, AdamW), ``step`` (one
optimizer step), ``checkpoint`` (save / resume), ``metrics`` (eval loss, MFU), ``save``
(the final HF folder) and ``entry`` (the command line). ``pretrain`` trains the toy
source/teacher models with the same engine, step and schedule; ``distill`` holds the
distillation losses and teacher caches; ``data`` the packed token blocks."""
