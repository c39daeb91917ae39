"""`python -m latentplan.cli <command> ...`: the `latentplan` command without its script."""

import sys

from latentplan.cli import main

sys.exit(main())
