"""``python -m tokalign_core.train --config run.json``: one training process (also what the
``deepspeed --module`` and ``torchrun -m`` launchers run)."""

import sys

from tokalign_core.train.entry import main

sys.exit(main())
