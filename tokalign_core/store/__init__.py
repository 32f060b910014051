"""The artifact store: content-addressed, atomically written folders (``artifacts``), the
hashing that names them, file locks, streamed ``.npz``/``.npy`` reading, spill folders and
the guards on inputs one stage takes from another."""
