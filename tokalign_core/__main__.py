"""``python -m tokalign_core`` (kept for scripts written before the command line moved to
``tokalign``): the library's one entry point, and the one module of it allowed to import the
CLI (the import-isolation test names it)."""

import sys

from tokalign.cli import main

sys.exit(main())
