"""``python -m mixedfx`` runs the command line."""

import sys

from mixedfx.cli import main

sys.exit(main())
