"""``python -m drorae.cli`` (what torchrun runs)."""

import sys

from . import main

sys.exit(main())
