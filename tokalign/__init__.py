"""The ``tokalign`` command line: the edge of the house. The only package besides the
Prefect flows that may import ``flows`` and ``tasks``; the library (``tokalign_core``) never
imports it."""

from tokalign_core import __version__

__all__ = ["__version__"]
