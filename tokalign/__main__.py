import sys

from tokalign.cli import main

sys.exit(main())
