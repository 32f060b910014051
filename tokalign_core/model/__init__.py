"""Models: loading any model spec (hub id, folder, GGUF, builtin), initialising a model for a
new vocabulary (aligned rows and the baselines), model cards, pre-flight checks, toy models."""
