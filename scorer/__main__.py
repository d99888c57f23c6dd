"""``python -m scorer`` — the same as ``ih-scorer``."""

import sys

from .cli import main

sys.exit(main())
