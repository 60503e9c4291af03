"""`python -m retort ...`: the `retort` command (as `python -m retort.cli`)."""

import sys

from .cli import main

sys.exit(main())
