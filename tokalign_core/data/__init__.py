"""Stage 1 input: text sources found on the machine or given by the user, mixed into a
sharded corpus artifact with a held-out split."""
