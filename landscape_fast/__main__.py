"""``python -m landscape_fast`` runs the CLI."""

import sys

from landscape_fast.cli import main

sys.exit(main())
