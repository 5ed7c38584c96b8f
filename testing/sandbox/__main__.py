"""``python -m testing.sandbox ...``: see testing.sandbox.cli."""

import sys

from testing.sandbox.cli import main

sys.exit(main())
