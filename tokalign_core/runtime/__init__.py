"""How work runs: the array backend switch (NumPy / CuPy / torch), the shard executor
(serial or Dask) and the metrics loggers core loops write to."""
