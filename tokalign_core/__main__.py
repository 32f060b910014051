import sys

from tokalign_core.cli import main

sys.exit(main())
